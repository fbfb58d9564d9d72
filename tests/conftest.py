"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A barely trained 32x32 ResNet checkpoint (the CLI's embedded MNIST is 1x32x32), one per test module."""
    from patchdb.baselines import ModelConfig, TrainConfig, train

    out = tmp_path_factory.mktemp("ck") / "net"
    train(ModelConfig(width=4, depth=1, emb_dim=8), TrainConfig(epochs=1, batch_size=8, ema=0),
          torch.rand(8, 1, 32, 32) * 2 - 1, None, out)
    return out
