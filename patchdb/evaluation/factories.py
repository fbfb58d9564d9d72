"""Factories that make a machine or a network from the options of a command (any engine with the
denoiser contract), and the labels of seeds."""

from __future__ import annotations

from pathlib import Path

import torch

from ..baselines import (
    EpsDenoiser,
    check_data_fits,
    load_checkpoint,
    receptive_field,
    weights_digest,
)
from ..denoisers.factory import make_denoiser
from ..denoisers.retrieval import Retrieval
from ..errors import PatchdbError
from ..generate import sample_labels
from ..indexing.reader import open_index
from ..networks import network_denoiser
from ..networks import receptive_field as measured_field
from ..sampler import Denoiser
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


def load_any_network(shape: tuple[int, int, int], checkpoint=None, network: str | None = None,
                     predict: str | None = None, net_schedule: str | None = None, net_time: str = "nearest",
                     device="cpu") -> tuple[Denoiser, dict]:
    """The network that calibrate and compare follow: a checkpoint folder of ``patchdb train``, or any
    network :mod:`patchdb.networks` reads (``module:function``, TorchScript file, diffusers folder) with
    what it predicts and its noise schedule stated. One line if neither or both are given, or if the
    network does not fit images of ``shape`` (C, H, W).

    Returns ``(denoiser, about)``; ``about`` holds ``name``, ``text`` (for messages), ``conditional``,
    ``receptive_field`` (ResNet formula, or measured for a foreign network), ``weights`` (a digest) and
    ``model`` (what the settings of a run record, and what merging runs checks).
    """
    if checkpoint is None and network is None:
        raise PatchdbError("give the network to follow: -c/--checkpoint (a folder of patchdb train) or --network "
                           "(module:function, TorchScript file or diffusers folder)")
    if checkpoint is not None and network is not None:
        raise PatchdbError("give -c/--checkpoint or --network, not both: they name the network to follow")
    channels, height, width = shape
    if checkpoint is not None:
        if predict is not None or net_schedule is not None:
            raise PatchdbError("--predict and --net-schedule describe a --network; a checkpoint records its own, drop them")
        den, cfg, _info = load_network(checkpoint, channels, height, width, device)
        return den, {"name": Path(str(checkpoint)).name, "text": f"{cfg.arch} ({cfg.padding})",
                     "conditional": cfg.conditional, "receptive_field": receptive_field(cfg),
                     "weights": weights_digest(checkpoint), "model": cfg.to_dict(), "checkpoint": str(checkpoint)}
    if predict is None or net_schedule is None:
        raise PatchdbError("--network needs --predict (eps, x0 or v) and --net-schedule (cosine, "
                           "ddpm-linear[:beta0,beta1,T] or an alphabar file): state what the network was trained with")
    den, info = network_denoiser(network, predict, net_schedule, net_time, device)
    _probe(den, shape, network)
    info["receptive_field"] = measured_field(den, shape)
    return den, {"name": Path(str(network).split(":")[0]).name, "text": f"{info['kind']} network ({predict}, {net_schedule})",
                 "conditional": den.conditional, "receptive_field": info["receptive_field"],
                 "weights": info["weights"], "model": info, "network": str(network)}


def _probe(den: Denoiser, shape: tuple[int, int, int], source: str) -> None:
    """One call on a zero image: a network that cannot take the dataset's images fails here, in one line."""
    labels = torch.zeros(1, dtype=torch.long) if getattr(den, "conditional", False) else None
    try:
        den(torch.zeros(1, *shape), 0.5, labels)
    except PatchdbError:
        raise
    except Exception as err:  # noqa: BLE001 (the user's network: any failure is theirs to fix, said in one line)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise PatchdbError(f"network {source} fails on a {shape[0]}x{shape[1]}x{shape[2]} image of the dataset "
                           f"({type(err).__name__}: {first}); give data of the size and channels it was trained on") from None
