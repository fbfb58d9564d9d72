"""The denoiser contract that every engine keeps, and the checks the engines share.

A *denoiser* is any callable ``D(x, t, labels=None) -> tensor`` returning an estimate of
``E[x_0 | x_t = x]`` for a batch ``x`` (B, C, H, W) at time ``t``; ``labels`` (B,) conditions each
image on a class. The sampler, calibration, comparison and attribution only ever see that contract.
The exact engine (:mod:`.exact`) and the approximate one (:mod:`.approx`) differ only
in where their candidates come from; what they share is written here once.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..errors import PatchdbError
from ..schedule import ScaleSchedule


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, t: float, labels: torch.Tensor | None = None) -> torch.Tensor: ...


def check_tensor(x: torch.Tensor, what: str, ndim: int = 4) -> None:
    """One-line errors for tensors a user passes in."""
    if not isinstance(x, torch.Tensor):
        raise PatchdbError(f"{what} must be a torch tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise PatchdbError(f"{what} must have {ndim} dimensions (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise PatchdbError(f"{what} must be a float tensor in [-1, 1], got {x.dtype}; use images.float() / 127.5 - 1")
    if not torch.isfinite(x).all():
        raise PatchdbError(f"{what} contains NaN or inf values; clean the input before denoising")


def check_time(t: float) -> float:
    t = float(t)
    if not 0.0 < t <= 1.0:
        raise PatchdbError(f"time t={t} is outside (0, 1]; the machines are defined for noisy inputs")
    return t


def check_size(machine_name: str, k: int | None) -> int:
    """The patch size a local machine was called with; one line when it is missing."""
    if k is None:
        raise PatchdbError(f"the {machine_name} machine needs a patch size k")
    return k


def size_at(schedule: ScaleSchedule | None, t: float) -> int:
    """The patch size of ``schedule`` at time ``t`` (``sizes[round(t * S) - 1]``, docs/math.md "Sampler")."""
    if schedule is None:
        raise PatchdbError("this machine has no scale schedule; pass schedule=... or call denoise(..., k=K)")
    return schedule.size_at_time(t)


def check_shape(x: torch.Tensor, shape: tuple[int, int, int], where: str) -> None:
    """``x`` (B, C, H, W) must hold images of ``shape`` (C, H, W), the shape of ``where``'s images."""
    if tuple(x.shape[1:]) != tuple(shape):
        c, h, w = shape
        raise PatchdbError(
            f"x has images of shape {tuple(x.shape[1:])} but {where} holds {c}x{h}x{w} images; "
            "load the dataset with the same size and channels"
        )


def check_train_labels(labels, n: int) -> torch.Tensor:
    """The (N,) class labels of a training set, as int64; one line when they do not fit."""
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.ndim != 1 or labels.numel() != n:
        raise PatchdbError(f"training labels must be {n} integers, got shape {tuple(labels.shape)} and {labels.dtype}")
    if (labels < 0).any():
        raise PatchdbError("training labels must be non-negative class indices")
    return labels.long()


def batch_labels(labels, batch: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """The (B,) class of each image of a batch from one label or one per image."""
    labels = torch.as_tensor(labels, dtype=torch.long).to(device).reshape(-1)
    if labels.numel() == 1:
        labels = labels.expand(batch)
    if labels.numel() != batch:
        raise PatchdbError(f"got {labels.numel()} labels for a batch of {batch} images; give one label per image")
    return labels
