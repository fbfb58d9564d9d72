"""The one factory of denoisers, and a one-call exact denoiser for scripts."""

from __future__ import annotations

import torch

from ..errors import PatchdbError
from ..schedule import ScaleSchedule
from ..spec import Machine
from .approx import ApproxMachine
from .contract import Denoiser, check_tensor
from .exact import ExactMachine
from .retrieval import Retrieval


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
    """One exact denoiser call of a machine (docs/math.md "The four machines").

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
    retrieval: Retrieval | None = None,
    **options,
) -> Denoiser:
    """The one factory of denoisers: exact over ``images``, or top-K over an open index file.

    With ``index`` (a :class:`patchdb.indexing.reader.IndexFile`) and ``exact=False`` the approximate
    engine is built with ``retrieval`` (default :class:`Retrieval`'s, the CLI's defaults; ``options``
    may override single knobs: topk, nprobe, ef, k_factor, scan_cap, tail_correction; and set dtype,
    seed); with ``exact=True`` the exact engine runs on the images stored in the file. Without
    ``index`` the exact engine runs on ``images``.
    """
    if index is not None and not exact:
        engine = ApproxMachine(index, machine, schedule, retrieval, **options)
        # every FAISS payload the schedule will load, checked now: a damaged one is refused before sampling
        index.verify_sizes(engine.schedule.distinct() if engine.schedule is not None else index.sizes)
        return engine
    if index is not None:
        dtype = options.get("dtype", torch.float32)
        images = index.images().to(dtype).div_(127.5).sub_(1.0)
        labels = index.labels()
    if images is None:
        raise PatchdbError("make_denoiser needs training images or an index file")
    keep = {key: options[key] for key in ("device", "block_bytes") if key in options}
    return ExactMachine(images, machine, schedule, labels=labels, **keep)
