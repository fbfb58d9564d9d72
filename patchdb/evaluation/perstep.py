"""Per-step agreement of the denoisers on the network's own trajectory (a second protocol beside the
end-to-end comparison of docs/math.md).

Run the network's deterministic DDIM sampler (docs/math.md "Sampler") from each seed. At every step ``i``
(time ``t = i/S``) the network and each machine get the *same* noisy ``x_t`` the network's trajectory
holds, and their denoised images ``D_net(x_t, t)`` and ``D_machine(x_t, t)`` are compared: Pearson ``r``
over all pixels and channels (reported as ``r^2``) and the mean squared error per pixel and channel (on
patchdb's [-1, 1] scale). This is how later work reports how well an analytic denoiser matches a network
one noise level at a time (Lukoianov et al. 2025; GoldDiff, arXiv 2602.16498), rather than through the
final image alone: errors do not compound along the machine's own trajectory.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import PatchdbError
from ..sampler import Denoiser, ddim_sample
from ..schedule import alpha_sigma
from ..store import atomic_write
from .batches import check_runs, seed_batches
from .metrics import pearson

PROTOCOLS = ("end-to-end", "per-step")


@dataclass
class PerStep:
    """Per-step tables: ``r[name]`` and ``mse[name]`` are (S, M), row ``i-1`` = step ``i`` (time i/S)."""

    seeds: list[int]
    labels: torch.Tensor | None
    r: dict[str, torch.Tensor]
    mse: dict[str, torch.Tensor]
    settings: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return next(iter(self.r.values())).shape[0]

    def rows(self) -> list[dict]:
        """One row per step, highest noise first: t, a_t, b_t, and per machine the median and quartiles
        over seeds of r^2 and MSE."""
        out = []
        for i in range(self.steps, 0, -1):
            if bool(torch.isnan(next(iter(self.r.values()))[i - 1]).all()):
                continue  # a step the run did not evaluate (at_steps)
            t = i / self.steps
            a, b = alpha_sigma(t)
            row = {"step": i, "t": t, "alphabar": a * a, "sigma": b / a}
            for name in self.r:
                r2 = (self.r[name][i - 1] ** 2).numpy()
                mse = self.mse[name][i - 1].numpy()
                row[name] = {
                    "median_r2": float(np.median(r2)), "r2_q25": float(np.percentile(r2, 25)),
                    "r2_q75": float(np.percentile(r2, 75)), "median_mse": float(np.median(mse)),
                    "mse_q25": float(np.percentile(mse, 25)), "mse_q75": float(np.percentile(mse, 75)),
                }
            out.append(row)
        return out

    def summary(self) -> dict:
        """Per machine: the mean over steps of the per-step median r^2 and median MSE."""
        rows = self.rows()
        return {name: {"mean_over_steps_median_r2": float(np.mean([row[name]["median_r2"] for row in rows])),
                       "mean_over_steps_median_mse": float(np.mean([row[name]["median_mse"] for row in rows]))}
                for name in self.r}

    def to_dict(self) -> dict:
        return {
            "protocol": "per-step",
            "definitions": {
                "r2": "square of the Pearson correlation over all pixels and channels of D_net(x_t, t) and "
                      "D_machine(x_t, t), x_t from the network's own DDIM trajectory",
                "mse": "mean over pixels and channels of (D_net - D_machine)^2, images in [-1, 1]",
                "sigma": "b_t / a_t, the noise-to-signal ratio of x_t (docs/math.md cosine schedule)",
            },
            "summary": self.summary(),
            "per_step": self.rows(),
            "seeds": list(self.seeds),
            "labels": None if self.labels is None else self.labels.tolist(),
            "per_seed_r": {name: _rows(r) for name, r in self.r.items()},
            "per_seed_mse": {name: _rows(m) for name, m in self.mse.items()},
            "settings": self.settings,
            "note": "per_seed tables: row i-1 is sampler step i (time i/S), lowest noise first; per_step rows: highest noise first",
        }


def _rows(table: torch.Tensor) -> list[list[float | None]]:
    """A table as JSON rows; steps that were not evaluated (NaN) become null."""
    return [[None if math.isnan(v) else v for v in row] for row in table.tolist()]


def per_step(
    net: Denoiser,
    machines: dict[str, Denoiser],
    shape: tuple[int, int, int],
    seeds: list[int],
    steps: int = 20,
    labels: torch.Tensor | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    at_steps: list[int] | None = None,
) -> PerStep:
    """Feed the network's own DDIM trajectory to every machine and compare the denoised images per step.

    ``at_steps`` (default: every step) evaluates the machines only at those steps ``i`` in 1..S (their rows
    stay NaN elsewhere): the network still runs its whole trajectory, the machines cost only where asked.

    Parameters
    ----------
    net : the network's denoiser ``D(x, t, labels)``; its trajectory is the one followed.
    machines : name -> denoiser (each called once per step on the network's ``x_t``).
    shape : (C, H, W). seeds : one noise seed per trajectory (M). labels : (M,) or None.

    Returns
    -------
    :class:`PerStep` with (S, M) float64 tables of Pearson r and MSE per machine.
    """
    check_runs("the per-step protocol", seeds, machines, labels)
    chosen = set(range(1, steps + 1)) if not at_steps else {int(i) for i in at_steps}
    if not chosen <= set(range(1, steps + 1)):
        raise PatchdbError(f"--at-steps {sorted(chosen)} are not all sampler steps 1..{steps}; give steps in that range")
    r = {name: torch.full((steps, len(seeds)), float("nan"), dtype=torch.float64) for name in machines}
    mse = {name: torch.full((steps, len(seeds)), float("nan"), dtype=torch.float64) for name in machines}
    bar = tqdm(total=len(seeds) * len(chosen), desc="per-step", unit="step", disable=not progress)
    try:
        for cols, lab, noise in seed_batches(seeds, labels, batch_size, shape, dtype, device):
            n = len(noise)

            def probe(x: torch.Tensor, t: float, lab_: torch.Tensor | None = None, cols=cols, n=n) -> torch.Tensor:
                i = round(t * steps)
                d_net = net(x, t, lab_)
                if i not in chosen:
                    return d_net
                for name, machine in machines.items():
                    d_m = machine(x, t, lab_)
                    r[name][i - 1, cols] = pearson(d_net, d_m).cpu()
                    mse[name][i - 1, cols] = (d_net.double() - d_m.double()).pow(2).flatten(1).mean(1).cpu()
                bar.update(n)
                return d_net

            ddim_sample(probe, noise, steps, lab)
    finally:
        bar.close()
    return PerStep(list(seeds), None if labels is None else labels.cpu(), r, mse)


def format_per_step(ps: PerStep) -> str:
    """A plain text table: one line per step (highest noise first), median r^2 [IQR] and median MSE per machine."""
    names = list(ps.r)
    head = f"{'step':>4} {'t':>5} {'sigma':>8}" + "".join(f" {n + ' r^2':>10} {'IQR':>15} {n + ' MSE':>10}" for n in names)
    lines = [head, "-" * len(head)]
    for row in ps.rows():
        line = f"{row['step']:>4} {row['t']:>5.2f} {row['sigma']:>8.3f}"
        for n in names:
            c = row[n]
            line += f" {c['median_r2']:>10.4f} {'[' + format(c['r2_q25'], '.3f') + ', ' + format(c['r2_q75'], '.3f') + ']':>15} {c['median_mse']:>10.2e}"
        lines.append(line)
    summ = ps.summary()
    lines.append("mean over steps: " + "; ".join(f"{n} r^2 {summ[n]['mean_over_steps_median_r2']:.4f}, MSE "
                                                f"{summ[n]['mean_over_steps_median_mse']:.2e}" for n in names))
    lines.append(f"{len(ps.seeds)} seeds; D of the network and of each machine at the same x_t of the network's DDIM "
                 "trajectory; r^2: squared Pearson over pixels and channels; MSE on [-1, 1] images.")
    return "\n".join(lines)


def write_per_step(ps: PerStep, folder: str | Path) -> dict[str, Path]:
    """Write perstep.json, perstep.txt and perstep.png into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {k: folder / k for k in ("perstep.json", "perstep.txt", "perstep.png")}
    with atomic_write(paths["perstep.json"]) as tmp:
        tmp.write_text(json.dumps(ps.to_dict(), indent=1, default=str))
    with atomic_write(paths["perstep.txt"]) as tmp:
        tmp.write_text(format_per_step(ps) + "\n")
    save_per_step_plot(ps, paths["perstep.png"])
    return paths


def save_per_step_plot(ps: PerStep, path: Path) -> None:
    """Median r^2 and MSE per step against t, with the interquartile range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ps.rows()
    ts = [row["t"] for row in rows]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for name in ps.r:
        for ax, key in zip(axes, ("r2", "mse")):
            mid = [row[name][f"median_{key}"] for row in rows]
            ax.plot(ts, mid, "o-", ms=3, label=name)
            ax.fill_between(ts, [row[name][f"{key}_q25"] for row in rows], [row[name][f"{key}_q75"] for row in rows], alpha=0.2)
    axes[0].set_ylabel("r$^2$ of D (network vs machine)")
    axes[0].set_ylim(0, 1.02)
    axes[1].set_ylabel("MSE of D")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("t (1 = pure noise)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"per-step agreement on the network's trajectory, {len(ps.seeds)} seeds", fontsize=9)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
