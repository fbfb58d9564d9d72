"""Deterministic DDIM sampler over any denoiser callable (SPEC.md "Sampler").

The sampler never imports FAISS, h5py or the networks: it only needs ``D(x, t, labels) -> x0``.
Each image has its own noise seed, so a sample does not depend on the batch it was drawn in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .errors import PatchdbError
from .schedule import alpha_sigma

Denoiser = Callable[..., torch.Tensor]


def initial_noise(seeds: list[int], shape: tuple[int, int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x_T for each seed: standard normal (len(seeds), C, H, W), drawn on the CPU in float64 then cast."""
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64) for s in seeds]
    return torch.stack(noise).to(dtype)


def times(steps: int) -> list[float]:
    """The step times i/S for i = S..1 (the sampler evaluates the denoiser at these)."""
    if steps < 1:
        raise PatchdbError(f"the sampler needs at least one step, got {steps}")
    return [i / steps for i in range(steps, 0, -1)]


@dataclass
class SampleResult:
    samples: torch.Tensor  # (B, C, H, W), the final x = D at t = 0
    trajectory: torch.Tensor | None  # (S, B, C, H, W): D of each step, step S first


def ddim_sample(
    denoiser: Denoiser,
    noise: torch.Tensor,
    steps: int = 20,
    labels: torch.Tensor | None = None,
    keep_trajectory: bool = False,
    callback: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> SampleResult:
    """Deterministic DDIM from x_T = ``noise`` (SPEC.md "Sampler"): for i = S..1,
    ``x <- a_{t'} D + b_{t'} eps_hat`` with ``t = i/S``, ``t' = (i-1)/S``; at ``t' = 0`` this is ``D``.

    ``callback`` receives ``{"step": i, "t": t, "x": x, "denoised": D}`` after each step.
    """
    x = noise
    kept = []
    for t in tqdm(times(steps), desc="sampling", unit="step", disable=not progress, leave=False):
        i = round(t * steps)
        denoised = denoiser(x, t, labels)
        a, b = alpha_sigma(t)
        eps = (x - a * denoised) / b
        a_next, b_next = alpha_sigma((i - 1) / steps)
        x = a_next * denoised + b_next * eps if i > 1 else denoised
        if keep_trajectory:
            kept.append(denoised.detach().cpu())
        if callback is not None:
            callback({"step": i, "t": t, "x": x, "denoised": denoised})
    return SampleResult(x, torch.stack(kept) if keep_trajectory else None)
