"""Denoisers of SPEC.md's machines behind one interface.

A *denoiser* is any callable ``D(x, t, labels=None) -> tensor`` returning an estimate of
``E[x_0 | x_t = x]`` for a batch ``x`` (B, C, H, W) at time ``t``; ``labels`` (B,) conditions each
image on a class. The sampler, calibration, comparison and attribution only ever see that contract.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..errors import PatchdbError
from ..patches import geometry
from ..schedule import ScaleSchedule, check_patch_size, parse_schedule
from ..spec import Machine
from .exact import DEFAULT_BLOCK_BYTES, CandidatePool, candidate_pools, exact_is, exact_local


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


class ExactMachine:
    """Exact denoiser of one machine over a training set, with a patch size per step.

    Parameters
    ----------
    images : (N, C, H, W) float training images in [-1, 1].
    machine : "is", "ls", "els" or "bbels" (any case).
    schedule : a :class:`ScaleSchedule` (or anything :func:`parse_schedule` reads); the size used
        at time ``t`` is ``sizes[round(t * S) - 1]``. Unused by IS.
    labels : (N,) class labels of ``images`` for class-conditional calls.
    block_bytes : size of one block of logits; bounds peak memory.
    dedup : scan each distinct candidate window once, weighted by its multiplicity (same result;
        the distinct windows of each patch size are found on first use and kept). Pays off on data
        with flat backgrounds (MNIST: 3x fewer windows at k = 3, 1.4x at k = 7).
    """

    def __init__(
        self,
        images: torch.Tensor,
        machine: str | Machine,
        schedule: ScaleSchedule | str | None = None,
        labels: torch.Tensor | None = None,
        device: str | torch.device | None = None,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        dedup: bool = True,
    ):
        check_tensor(images, "training images")
        self.machine = Machine.parse(machine)
        self.schedule = parse_schedule(schedule) if schedule is not None else None
        if self.schedule is not None:
            self.schedule.check_fits(images.shape[-2], images.shape[-1])
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.labels = None if labels is None else _check_labels(labels, len(images)).to(self.device)
        self.block_bytes = int(block_bytes)
        self.dedup = bool(dedup)
        self._by_class: dict[int, torch.Tensor] = {}
        self._pools: dict[tuple[int | None, int], list[CandidatePool] | None] = {}

    def size_at(self, t: float) -> int:
        if self.schedule is None:
            raise PatchdbError("this machine has no scale schedule; pass schedule=... or call denoise(..., k=K)")
        return self.schedule.size_at_time(t)

    def __call__(self, x: torch.Tensor, t: float, labels: torch.Tensor | None = None) -> torch.Tensor:
        k = None if self.machine is Machine.IS else self.size_at(float(t))
        return self.denoise(x, t, k=k, labels=labels)

    def denoise(self, x: torch.Tensor, t: float, k: int | None = None, labels=None) -> torch.Tensor:
        """``D(x, t)`` at patch size ``k``; ``labels`` (B,) or an int conditions on classes."""
        t = check_time(t)
        check_tensor(x, "x")
        self._check_shape(x)
        if self.machine is not Machine.IS:
            if k is None:
                raise PatchdbError(f"the {self.machine.value} machine needs a patch size k")
            check_patch_size(k)
        x_dev = x.to(self.device)
        if labels is None:
            return self._run(x_dev, None, t, k).to(x.device)
        labels = self._batch_labels(labels, x.shape[0])
        out = torch.empty_like(x_dev)
        for label in torch.unique(labels).tolist():
            rows = (labels == label).nonzero().view(-1)
            out[rows] = self._run(x_dev[rows], label, t, k)
        return out.to(x.device)

    def _run(self, x: torch.Tensor, label: int | None, t: float, k: int | None) -> torch.Tensor:
        images = (self.images if label is None else self._class_images(label)).to(x.dtype)
        if self.machine is Machine.IS:
            return exact_is(x, images, t, self.block_bytes)
        pools = self._pools_for(label, images, k) if self.dedup else None
        return exact_local(x, images, t, k, self.machine, self.block_bytes, pools=pools)

    def prepare(self, k: int, label: int | None = None) -> None:
        """Build the distinct-window pool of size ``k`` (and class ``label``) now rather than in the
        first call that needs it (a one-time sort of every window: ~50 s at N = 60,000, k = 3)."""
        if self.dedup and self.machine is not Machine.IS:
            images = self.images if label is None else self._class_images(label)
            self._pools_for(label, images, check_patch_size(k))

    def _pools_for(self, label: int | None, images: torch.Tensor, k: int) -> list[CandidatePool] | None:
        key = (label, k)
        if key not in self._pools:
            geom = geometry(self.machine, k, images.shape[-2], images.shape[-1])
            self._pools[key] = candidate_pools(images, geom)
        return self._pools[key]

    def _check_shape(self, x: torch.Tensor) -> None:
        if x.shape[1:] != self.images.shape[1:]:
            c, h, w = self.images.shape[1:]
            raise PatchdbError(
                f"x has images of shape {tuple(x.shape[1:])} but the training set is {c}x{h}x{w}; "
                "load the dataset with the same size and channels"
            )

    def _batch_labels(self, labels, batch: int) -> torch.Tensor:
        if self.labels is None:
            raise PatchdbError("class-conditional denoising needs the training labels; pass labels= for the training set")
        labels = torch.as_tensor(labels, dtype=torch.long).to(self.device).reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(batch)
        if labels.numel() != batch:
            raise PatchdbError(f"got {labels.numel()} labels for a batch of {batch} images; give one label per image")
        return labels

    def _class_images(self, label: int) -> torch.Tensor:
        if label not in self._by_class:
            present = torch.unique(self.labels)
            if label < 0 or label > int(present.max()):
                raise PatchdbError(
                    f"label {label} is out of range 0..{int(present.max())} of the training labels; pick a class that exists"
                )
            rows = (self.labels == label).nonzero().view(-1)
            if rows.numel() == 0:
                raise PatchdbError(f"label {label} has no training images in this data; pick another class or drop --limit/--classes")
            self._by_class[label] = self.images[rows]
        return self._by_class[label]


def _check_labels(labels, n: int) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.ndim != 1 or labels.numel() != n:
        raise PatchdbError(f"training labels must be {n} integers, got shape {tuple(labels.shape)} and {labels.dtype}")
    if (labels < 0).any():
        raise PatchdbError("training labels must be non-negative class indices")
    return labels.long()


def denoise(
    x: torch.Tensor,
    t: float,
    k: int | None,
    images: torch.Tensor,
    machine: str | Machine,
    labels: torch.Tensor | None = None,
    label: int | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """One exact denoiser call of a machine (SPEC.md "The four machines").

    Parameters
    ----------
    x : (B, C, H, W) float tensor in [-1, 1]: the noisy images x_t.
    t : time in (0, 1].
    k : odd patch size (ignored by IS).
    images : (N, C, H, W) float tensor in [-1, 1]: the training set.
    machine : "is", "ls", "els" or "bbels", any case.
    labels : (N,) class labels of ``images``. label : class to condition on (None: all images).
    device : where to compute (default: the device of ``x``).

    Returns
    -------
    (B, C, H, W) tensor ``D`` in the dtype of ``x``, on the device of ``x``.
    """
    check_tensor(x, "x")
    engine = ExactMachine(images, machine, labels=labels, device=device or x.device)
    if label is not None and labels is None:
        raise PatchdbError("label= needs labels= (the class of each training image)")
    return engine.denoise(x, t, k=k, labels=None if label is None else torch.full((x.shape[0],), int(label)))


def make_denoiser(
    machine: str | Machine,
    schedule: ScaleSchedule | str | None,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    index=None,
    exact: bool = False,
    **options,
) -> Denoiser:
    """The one factory of denoisers: exact over ``images``, or top-K over an open index file.

    With ``index`` (a :class:`patchdb.indexfile.IndexFile`) and ``exact=False`` the approximate engine
    is built (``options``: topk, nprobe, ef, tail_samples, dtype); with ``exact=True`` the exact engine
    runs on the images stored in the file. Without ``index`` the exact engine runs on ``images``.
    """
    if index is not None and not exact:
        from .approx import ApproxMachine  # late import: only index users need faiss

        return ApproxMachine(index, machine, schedule, **options)
    if index is not None:
        dtype = options.get("dtype", torch.float32)
        images = index.images().to(dtype).div_(127.5).sub_(1.0)
        labels = index.labels()
    if images is None:
        raise PatchdbError("make_denoiser needs training images or an index file")
    keep = {key: options[key] for key in ("device", "block_bytes") if key in options}
    return ExactMachine(images, machine, schedule, labels=labels, **keep)
