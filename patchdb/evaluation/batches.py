"""The seed batches shared by compare, the per-step protocol and calibration: inputs checked once, then
one batch of seeds at a time with its labels and its initial noise."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import PatchdbError
from ..sampler import initial_noise


def check_runs(what: str, seeds: list[int], machines: dict, labels: torch.Tensor | None) -> None:
    """One-line errors for no seed, no machine, or a label count that differs from the seed count."""
    if not seeds:
        raise PatchdbError(f"{what} needs at least one seed")
    if not machines:
        raise PatchdbError(f"{what} needs at least one machine")
    if labels is not None and len(labels) != len(seeds):
        raise PatchdbError(f"got {len(labels)} labels for {len(seeds)} seeds; give one label per seed")


def seed_batches(
    seeds: list[int],
    labels: torch.Tensor | None,
    batch_size: int,
    shape: tuple[int, int, int],
    dtype: torch.dtype,
    device: str | torch.device,
) -> Iterator[tuple[slice, torch.Tensor | None, torch.Tensor]]:
    """``(cols, labels, noise)`` per batch of at most ``batch_size`` seeds, in order.

    ``cols`` is the batch's slice of ``seeds``; ``labels`` its labels on ``device`` (None when
    unconditional); ``noise`` its x_T (:func:`patchdb.sampler.initial_noise`) on ``device``.
    """
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        cols = slice(start, start + len(chunk))
        lab = None if labels is None else labels[cols].to(device)
        yield cols, lab, initial_noise(chunk, shape, dtype).to(device)
