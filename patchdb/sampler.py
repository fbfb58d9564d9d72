"""Deterministic DDIM sampler over any denoiser callable (docs/math.md "Sampler").

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


def ddim_step(x: torch.Tensor, denoised: torch.Tensor, step: int, steps: int) -> torch.Tensor:
    """One DDIM step (docs/math.md "Sampler") from step ``step`` (time ``step/steps``) with the denoised ``D``:
    ``a_{t'} D + b_{t'} eps_hat``, ``t' = (step-1)/steps``; at ``t' = 0`` this is ``D``."""
    if step <= 1:
        return denoised
    a, b = alpha_sigma(step / steps)
    eps = (x - a * denoised) / b
    a_next, b_next = alpha_sigma((step - 1) / steps)
    return a_next * denoised + b_next * eps


def ddim_sample(
    denoiser: Denoiser,
    noise: torch.Tensor,
    steps: int = 20,
    labels: torch.Tensor | None = None,
    keep_trajectory: bool = False,
    callback: Callable[[dict], None] | None = None,
    progress: bool = False,
    first_step: int | None = None,
) -> SampleResult:
    """Deterministic DDIM from x_T = ``noise`` (docs/math.md "Sampler"): for i = S..1,
    ``x <- a_{t'} D + b_{t'} eps_hat`` with ``t = i/S``, ``t' = (i-1)/S``; at ``t' = 0`` this is ``D``.

    ``first_step`` (default S) starts the loop at step ``i = first_step`` instead, with ``noise`` then
    being the state at time ``first_step/S`` (a sampler run resumed part way; 0 returns it unchanged).
    ``callback`` receives ``{"step": i, "t": t, "x": x, "denoised": D}`` after each step.
    """
    all_times = times(steps)
    if first_step is not None:
        if not 0 <= first_step <= steps:
            raise PatchdbError(f"first_step {first_step} is outside 0..{steps}")
        all_times = all_times[steps - first_step:]
    x = noise
    kept = []
    for t in tqdm(all_times, desc="sampling", unit="step", disable=not progress, leave=False):
        i = round(t * steps)
        denoised = denoiser(x, t, labels)
        x = ddim_step(x, denoised, i, steps)
        if keep_trajectory:
            kept.append(denoised.detach().cpu())
        if callback is not None:
            callback({"step": i, "t": t, "x": x, "denoised": denoised})
    return SampleResult(x, torch.stack(kept) if keep_trajectory else None)
