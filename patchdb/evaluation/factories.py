"""Factories that make a machine or a network from the options of a command (any engine with the
denoiser contract), and the labels of seeds."""

from __future__ import annotations

import torch

from ..baselines import EpsDenoiser, check_data_fits, load_checkpoint
from ..denoisers.factory import make_denoiser
from ..denoisers.retrieval import Retrieval
from ..errors import PatchdbError
from ..generate import sample_labels
from ..indexing.reader import open_index
from ..spec import Machine


def load_network(checkpoint, channels: int, height: int, width: int, device="cpu"):
    """The network of a checkpoint folder as a denoiser; one line if the data does not fit it.

    Returns ``(EpsDenoiser, ModelConfig, config_dict)``.
    """
    net, cfg, info = load_checkpoint(checkpoint, device=device)
    check_data_fits(cfg, channels, height, width, where=f"the network in {checkpoint}")
    return EpsDenoiser(net, conditional=cfg.conditional, device=device), cfg, info


def machine_factory(machine, images: torch.Tensor, labels: torch.Tensor | None = None, device="cpu",
                    block_bytes: int | None = None, index=None, topk: int | None = None,
                    fingerprint: str | None = None, retrieval: Retrieval | None = None):
    """``make(schedule) -> denoiser`` for a machine, through :func:`patchdb.denoisers.factory.make_denoiser`:
    the exact engine over ``images``, or, when ``index`` (an index file path) is given, the approximate
    engine over that file with ``retrieval`` (``topk`` overrides its K), checked to be built from the
    same dataset when ``fingerprint`` is given."""
    machine = Machine.parse(machine)
    if index is not None and machine is not Machine.IS:
        handle = open_index(index)
        handle.check_dataset(fingerprint)
        settings = (retrieval or Retrieval()).with_options(topk=topk)
        return lambda schedule: make_denoiser(machine, schedule, index=handle, retrieval=settings, dtype=images.dtype)
    options = {"device": device, **({} if block_bytes is None else {"block_bytes": block_bytes})}
    return lambda schedule: make_denoiser(machine, None if machine is Machine.IS else schedule, images, labels,
                                          **options)


def seed_labels(num: int, label, cfg_conditional: bool, num_classes: int | None, first_seed: int = 0) -> torch.Tensor | None:
    """Labels of seeds ``first_seed ..``: None when unconditional, else one class or seed mod classes ("all", default)."""
    if not cfg_conditional:
        if label not in (None, "none"):
            raise PatchdbError("--label was given but the network is unconditional; drop --label")
        return None
    if label == "none":
        raise PatchdbError("the network is class-conditional: it needs labels; use --label N or --label all")
    return sample_labels(num, "all" if label is None else label, num_classes, first_seed)
