"""Validation of the approximate engine against the exact one: both sample from the same noise."""

from __future__ import annotations

import time

import torch

from ..denoisers.approx import ApproxMachine
from ..sampler import SampleResult, ddim_sample, initial_noise
from .metrics import median, pearson


def validate_engines(exact, approx: ApproxMachine, seeds: list[int], shape: tuple[int, int, int], steps: int,
                     labels: torch.Tensor | None = None, batch_size: int = 16, progress: bool = False,
                     exact_samples=None) -> dict:
    """Sample with both engines from the same noise; per step the max |D_approx - D_exact| and the
    ignored-mass bound, per seed the r^2 between final samples, and the time of each engine (of the
    approximate one also per step: where a sample's time goes).

    ``exact_samples`` (a :class:`patchdb.store.ExactSamples`): batches whose exact samples it holds are
    not recomputed (their stored exact time is counted), new ones are added to it.
    """
    diffs, bounds, tails, step_seconds, r2, seconds = [], [], [], [], [], {"exact": 0.0, "approx": 0.0}
    reused = 0
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        noise = initial_noise(chunk, shape, approx.dtype)
        lab = None if labels is None else labels[start : start + len(chunk)]
        runs = {}
        stored = None if exact_samples is None else exact_samples.lookup(chunk, lab)
        if stored is not None:
            runs["exact"] = SampleResult(stored[1], stored[0])
            seconds["exact"] += stored[2]
            reused += len(chunk)
        for name, engine in (("exact", exact), ("approx", approx)):
            if name in runs:
                continue
            t0 = time.perf_counter()
            runs[name] = ddim_sample(engine, noise, steps, lab, keep_trajectory=True, progress=progress)
            elapsed = time.perf_counter() - t0
            seconds[name] += elapsed
            if name == "exact" and exact_samples is not None:
                exact_samples.store(chunk, lab, runs[name].trajectory, runs[name].samples, elapsed)
        reports = approx.reports[-steps:]
        diffs.append((runs["approx"].trajectory - runs["exact"].trajectory).abs().flatten(2).amax(2))  # (S, b)
        bounds.append(torch.tensor([r.bound_max for r in reports]))
        tails.append(torch.tensor([r.tail_median for r in reports]))
        step_seconds.append([r.seconds for r in reports])
        r2 += (pearson(runs["approx"].samples, runs["exact"].samples) ** 2).tolist()
    diff = torch.cat(diffs, 1)  # (S, seeds), step S first
    per_step = [{"step": steps - i, "t": (steps - i) / steps, "k": approx.size_at((steps - i) / steps),
                 "max_abs_diff_median": median(diff[i]), "max_abs_diff_max": float(diff[i].max()),
                 "bound_max_median": median(torch.stack(bounds)[:, i]),
                 "tail_share_median": median(torch.stack(tails)[:, i]),
                 "approx_seconds": sum(row[i] for row in step_seconds)} for i in range(steps)]
    r2_t = torch.tensor(r2, dtype=torch.float64)
    return {"seeds": list(seeds), "r2": r2, "r2_median": median(r2_t), "r2_min": float(r2_t.min()),
            "steps": per_step, "seconds": seconds, "speedup": seconds["exact"] / max(seconds["approx"], 1e-9),
            "seconds_per_sample": {k: v / len(seeds) for k, v in seconds.items()}, "exact_reused": reused,
            # The rows the summaries come from, so runs split by seed merge exactly (patchdb merge validate).
            "per_seed_max_abs_diff": diff.T.tolist(), "per_batch_bound_max": torch.stack(bounds).tolist(),
            "per_batch_tail_median": torch.stack(tails).tolist(), "per_batch_approx_seconds": step_seconds}
