"""Metrics shared by evaluation: Pearson correlation (docs/math.md "Comparison") and medians."""

from __future__ import annotations

import torch


def pearson(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-image Pearson correlation of (B, ...) tensors over all their entries, in float64: (B,)."""
    u = u.flatten(1).double()
    v = v.flatten(1).double()
    u = u - u.mean(1, keepdim=True)
    v = v - v.mean(1, keepdim=True)
    return (u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1))


def median(v: torch.Tensor) -> float:
    """The median as statistics defines it (mean of the two middle values of an even count), as
    ``patchdb compare`` reports it; ``torch.median`` returns the lower one."""
    return float(torch.quantile(v.double().flatten(), 0.5))
