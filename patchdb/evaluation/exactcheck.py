"""The exact check of a calibration or comparison run through an index: on the first few seeds, also run
the exact engine and report how closely the approximate engine reproduced it (r^2 approx-vs-exact),
beside the machine-vs-network figure of both engines.

* comparison: the exact machine samples from the same noise as the approximate one; per seed
  ``r^2(approx final, exact final)``, and ``r^2`` with the network's final image of each;
* calibration: along the network's own DDIM trajectory, at each step and candidate size, ``r^2`` of the
  approximate and exact ``D_k`` at the same ``x_t``, each one's cosine with the network's score (the
  calibration criterion, docs/math.md), and whether both pick the same best size.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import PatchdbError
from ..sampler import Denoiser, ddim_sample, initial_noise
from ..schedule import ScaleSchedule, alpha_sigma
from .calibrate import cosine
from .metrics import pearson


def _check(n: int, seeds: list[int]) -> list[int]:
    if n < 1:
        raise PatchdbError(f"--exact-check must be at least 1 seed, got {n}")
    return list(seeds[:n])


def _stats(v: np.ndarray) -> dict:
    return {"median": float(np.median(v)), "min": float(np.min(v)), "q25": float(np.percentile(v, 25)),
            "q75": float(np.percentile(v, 75))}


def compare_exact_check(samples: dict[str, torch.Tensor], exact: dict[str, Denoiser], shape: tuple[int, int, int],
                        seeds: list[int], n: int, steps: int = 20, labels: torch.Tensor | None = None,
                        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Sample each exact machine from the first ``n`` seeds and set it beside the approximate samples.

    ``samples``: the comparison's samples (name -> (M, C, H, W), ``"net"`` the network's), first rows
    the first seeds; ``exact``: name -> the exact engine of the same machine and schedule.
    """
    chosen = _check(n, seeds)
    lab = None if labels is None else labels[: len(chosen)].to(device)
    noise = initial_noise(chosen, shape, dtype).to(device)
    net = samples["net"][: len(chosen)]
    out: dict = {"seeds": chosen, "machines": {}}
    for name, machine in exact.items():
        final = ddim_sample(machine, noise.clone(), steps, lab).samples.detach().cpu()
        approx = samples[name][: len(chosen)]
        r2_ae = (pearson(approx, final) ** 2).numpy()
        r2_en = (pearson(final, net) ** 2).numpy()
        r2_an = (pearson(approx, net) ** 2).numpy()
        out["machines"][name] = {
            "r2_approx_vs_exact": r2_ae.tolist(), "r2_exact_vs_net": r2_en.tolist(), "r2_approx_vs_net": r2_an.tolist(),
            "approx_vs_exact": _stats(r2_ae), "exact_vs_net": _stats(r2_en), "approx_vs_net": _stats(r2_an),
        }
    return out


def calibrate_exact_check(net: Denoiser, make_approx, make_exact, shape: tuple[int, int, int], seeds: list[int],
                          n: int, sizes: tuple[int, ...], steps: int = 20, labels: torch.Tensor | None = None,
                          device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Along the network's trajectory from the first ``n`` seeds: approximate vs exact ``D_k`` per step and size."""
    chosen = _check(n, seeds)
    lab = None if labels is None else labels[: len(chosen)].to(device)
    pairs = [(make_approx(ScaleSchedule((k,) * steps, name=f"constant:{k}")),
              make_exact(ScaleSchedule((k,) * steps, name=f"constant:{k}"))) for k in sizes]
    shape_t = (steps, len(sizes), len(chosen))
    r2, cos_a, cos_e = (torch.zeros(shape_t, dtype=torch.float64) for _ in range(3))

    def probe(x: torch.Tensor, t: float, lab_: torch.Tensor | None = None) -> torch.Tensor:
        i = round(t * steps)
        a, _ = alpha_sigma(t)
        d_net = net(x, t, lab_)
        ref = x - a * d_net
        for j, (approx, exact) in enumerate(pairs):
            d_a, d_e = approx(x, t, lab_), exact(x, t, lab_)
            r2[i - 1, j] = (pearson(d_a, d_e) ** 2).cpu()
            cos_a[i - 1, j] = cosine(ref, x - a * d_a).cpu()
            cos_e[i - 1, j] = cosine(ref, x - a * d_e).cpu()
        return d_net

    ddim_sample(probe, initial_noise(chosen, shape, dtype).to(device), steps, lab)
    same_best = (cos_a.argmax(dim=1) == cos_e.argmax(dim=1)).double()  # (S, n)
    return {
        "seeds": chosen, "sizes": list(sizes),
        "r2_approx_vs_exact": _stats(r2.numpy().ravel()),
        "r2_approx_vs_exact_per_size": {str(k): _stats(r2[:, j].numpy().ravel()) for j, k in enumerate(sizes)},
        "mean_cosine_approx": float(cos_a.mean()), "mean_cosine_exact": float(cos_e.mean()),
        "same_best_size": float(same_best.mean()),
        "best_size_approx": torch.as_tensor(sizes)[cos_a.argmax(dim=1)].tolist(),
        "best_size_exact": torch.as_tensor(sizes)[cos_e.argmax(dim=1)].tolist(),
        "note": "tables per step (row i-1 = step i, lowest noise first) and seed; r2 of D_k approx vs exact at the "
                "network's x_t, cosine of each with the network's score",
    }


def merge_compare_checks(checks: list[dict | None]) -> dict | None:
    """The comparison exact checks of runs split by seed as one: the parts' per-seed rows joined and the
    summaries recomputed (parts without a check, ``--exact-check 0``, add no seeds). None: no part has one."""
    checks = [c for c in checks if c]
    if not checks:
        return None
    machines = list(checks[0]["machines"])
    if any(list(c["machines"]) != machines for c in checks):
        raise PatchdbError("the parts' exact checks cover different machines; merge parts of one run only")
    out: dict = {"seeds": [s for c in checks for s in c["seeds"]], "machines": {}}
    for name in machines:
        row = {key: [v for c in checks for v in c["machines"][name][key]]
               for key in ("r2_approx_vs_exact", "r2_exact_vs_net", "r2_approx_vs_net")}
        row.update({short: _stats(np.asarray(row[key])) for short, key in (
            ("approx_vs_exact", "r2_approx_vs_exact"), ("exact_vs_net", "r2_exact_vs_net"),
            ("approx_vs_net", "r2_approx_vs_net"))})
        out["machines"][name] = row
    return out


def format_compare_check(check: dict) -> str:
    """Lines for the comparison table: per machine, median r^2 approx-vs-exact and each engine's r^2 with the network."""
    head = (f"exact check on seeds {check['seeds'][0]}..{check['seeds'][-1]} ({len(check['seeds'])}): "
            "median r^2 [min] approx-vs-exact | exact-vs-network | approx-vs-network (same seeds)")
    lines = [head]
    for name, row in check["machines"].items():
        lines.append(f"  {name:<10} {row['approx_vs_exact']['median']:.4f} [{row['approx_vs_exact']['min']:.4f}] | "
                     f"{row['exact_vs_net']['median']:.4f} | {row['approx_vs_net']['median']:.4f}")
    return "\n".join(lines)


def format_calibrate_check(check: dict) -> str:
    r2 = check["r2_approx_vs_exact"]
    return (f"exact check on {len(check['seeds'])} seed(s): D_k approx-vs-exact r^2 median {r2['median']:.4f} "
            f"(min {r2['min']:.4f}) over steps and sizes; mean cosine with the network approx {check['mean_cosine_approx']:.4f}, "
            f"exact {check['mean_cosine_exact']:.4f}; same best size in {100 * check['same_best_size']:.0f}% of steps")
