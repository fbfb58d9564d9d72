"""Generate samples at scale: batches of seeded noise through the DDIM sampler of any denoiser."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ._callable import make_callable
from .errors import PatchdbError
from .sampler import ddim_sample, initial_noise


@dataclass
class Generated:
    samples: torch.Tensor  # (N, C, H, W) on the CPU
    seeds: list[int]
    labels: torch.Tensor | None  # (N,) or None when unconditional
    trajectory: torch.Tensor | None  # (S, N, C, H, W) or None


def sample_labels(num: int, label: int | str | None, num_classes: int | None, first_seed: int = 0) -> torch.Tensor | None:
    """Labels of the ``num`` samples of seeds ``first_seed, first_seed + 1, ...``: None (unconditional),
    one class for all, or ``"all"``: seed ``s`` gets class ``s mod num_classes``, so a seed has the same
    label however a run of seeds is split (``--seed 4 --seeds 6`` draws classes 4..9)."""
    if label is None:
        return None
    if num_classes is None:
        raise PatchdbError("class-conditional sampling needs a labelled dataset")
    if label == "all":
        return (first_seed + torch.arange(num)) % num_classes
    label = int(label)
    if not 0 <= label < num_classes:
        raise PatchdbError(f"label {label} is out of range 0..{num_classes - 1}; pick a class of the dataset")
    return torch.full((num,), label, dtype=torch.long)


def generate(
    denoiser: Callable,
    shape: tuple[int, int, int],
    num: int,
    seed: int = 0,
    batch_size: int = 16,
    steps: int = 20,
    labels: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    keep_trajectory: bool = False,
    progress: bool = False,
) -> Generated:
    """``num`` samples; image ``j`` starts from the noise of seed ``seed + j`` whatever the batching."""
    if num < 1 or batch_size < 1:
        raise PatchdbError(f"need at least one sample and a positive batch size, got {num} and {batch_size}")
    seeds = [seed + j for j in range(num)]
    outs, trajs = [], []
    bar = tqdm(total=num * steps, desc="sampling", unit="step", disable=not progress)
    try:
        for start in range(0, num, batch_size):
            chunk = seeds[start : start + batch_size]
            noise = initial_noise(chunk, shape, dtype).to(device)
            lab = None if labels is None else labels[start : start + len(chunk)].to(device)
            advance = functools.partial(_advance, bar, len(chunk))
            res = ddim_sample(denoiser, noise, steps, lab, keep_trajectory, callback=advance)
            outs.append(res.samples.cpu())
            if keep_trajectory:
                trajs.append(res.trajectory)
    finally:
        bar.close()
    traj = torch.cat(trajs, dim=1) if keep_trajectory else None
    return Generated(torch.cat(outs), seeds, labels, traj)


def _advance(bar: tqdm, images: int, info: dict) -> None:
    """Sampler callback: one step of ``images`` images done."""
    bar.update(images)


make_callable(__name__)  # patchdb.generate(...) calls the function above
