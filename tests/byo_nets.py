"""Networks patchdb did not train, given to ``--network`` as ``byo_nets:FUNCTION`` in tests/test_networks.py."""

from __future__ import annotations

import torch
from torch import nn


class TinyConv(nn.Module):
    """Two zero-padded 3x3 convolutions with the network time added as a channel: ``(x, tau) -> prediction``."""

    def __init__(self, channels: int = 1, width: int = 8):
        super().__init__()
        self.inp = nn.Conv2d(channels + 1, width, 3, padding=1)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        time = (tau.float() / 100.0).view(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[2:])
        return self.out(torch.tanh(self.inp(torch.cat([x, time], dim=1))))


def tiny_conv() -> nn.Module:
    """A fixed (seeded) TinyConv: a plain torch module, no training needed to exercise the pipeline."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    net = TinyConv()
    torch.random.set_rng_state(gen_state)
    return net


def not_a_module():
    return 42
