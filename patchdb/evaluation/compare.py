"""How well each machine predicts a trained network (docs/math.md "Calibration and comparison").

From the same noise seed (and class label when conditional), sample with the network and with every
machine; ``r`` is the Pearson correlation over all pixels and channels of the two final images and
``r^2`` its square. (The paper's public evaluation code computes Pearson ``r`` and labels it ``r^2``:
patchdb reports both under their own names.) The table gives, per machine, the median and interquartile
range over seeds and the fraction of seeds where the machine's ``r^2`` beats the ideal score's (IS).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..sampler import Denoiser, ddim_sample
from ..store import atomic_write
from .batches import check_runs, seed_batches
from .exactcheck import format_compare_check
from .metrics import pearson

log = logging.getLogger(__name__)

BASELINE = "is"


@dataclass
class Comparison:
    seeds: list[int]
    labels: torch.Tensor | None
    samples: dict[str, torch.Tensor]  # name -> (M, C, H, W); "net" is the network
    r: dict[str, torch.Tensor]  # machine name -> (M,) Pearson r against the network
    settings: dict = field(default_factory=dict)
    exact_check: dict | None = None  # run through an index: the exact engine on the first seeds (evaluation.exactcheck)

    def r2(self, name: str) -> torch.Tensor:
        return self.r[name] ** 2

    def summary(self) -> dict:
        """Per machine: median r and r^2, their quartiles, and the fraction of seeds beating IS (by r^2)."""
        out = {}
        base = self.r2(BASELINE) if BASELINE in self.r else None
        for name, r in self.r.items():
            r_np, r2_np = r.numpy(), (r**2).numpy()
            row = {
                "seeds": len(r_np),
                "median_r": float(np.median(r_np)),
                "median_r2": float(np.median(r2_np)),
                "r_q25": float(np.percentile(r_np, 25)), "r_q75": float(np.percentile(r_np, 75)),
                "r2_q25": float(np.percentile(r2_np, 25)), "r2_q75": float(np.percentile(r2_np, 75)),
            }
            if base is not None and name != BASELINE:
                row["beats_is"] = float((self.r2(name) > base).double().mean())
            out[name] = row
        return out

    def to_dict(self) -> dict:
        return {
            "definitions": {
                "r": "Pearson correlation over all pixels and channels of the network's and the machine's final images",
                "r2": "the square of r (what the acceptance threshold and the paper's headline refer to)",
                "beats_is": "fraction of seeds where the machine's r2 exceeds the IS machine's r2",
            },
            "summary": self.summary(),
            "seeds": list(self.seeds),
            "labels": None if self.labels is None else self.labels.tolist(),
            "per_seed_r": {name: [float(v) for v in r] for name, r in self.r.items()},
            "settings": self.settings,
            **({} if self.exact_check is None else {"exact_check": self.exact_check}),
        }


def compare(
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
) -> Comparison:
    """Sample the network and each machine from the same noise; Pearson r of each machine's final image.

    Parameters
    ----------
    net : the network's denoiser ``D(x, t, labels)``.
    machines : name -> denoiser; include ``"is"`` to get the "beats IS" fraction.
    shape : (C, H, W). seeds : one noise seed per image (M). labels : (M,) or None.

    Returns
    -------
    :class:`Comparison`; samples on the CPU, r in float64.
    """
    check_runs("comparison", seeds, machines, labels)
    names = ["net", *machines]
    denoisers = {"net": net, **machines}
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    bar = tqdm(total=len(seeds) * steps * len(names), desc="comparing", unit="step", disable=not progress)
    try:
        for _, lab, noise in seed_batches(seeds, labels, batch_size, shape, dtype, device):
            n = len(noise)
            for name in names:
                res = ddim_sample(denoisers[name], noise.clone(), steps, lab,
                                  callback=lambda info, n=n: bar.update(n))
                parts[name].append(res.samples.detach().cpu())
    finally:
        bar.close()
    samples = {name: torch.cat(p) for name, p in parts.items()}
    r = {name: pearson(samples["net"], samples[name]) for name in machines}
    return Comparison(list(seeds), None if labels is None else labels.cpu(), samples, r)


def nearest_images(queries: torch.Tensor, images: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """Index of the L2-nearest training image (N, C, H, W) of each query (B, C, H, W)."""
    q = queries.flatten(1).double()
    best = torch.full((len(q),), float("inf"), dtype=torch.float64)
    idx = torch.zeros(len(q), dtype=torch.long)
    for s in range(0, len(images), block):
        im = images[s : s + block].flatten(1).double().to(q.device)
        d = torch.cdist(q, im)
        val, arg = d.min(dim=1)
        better = val < best
        best[better], idx[better] = val[better], arg[better] + s
    return idx


def format_table(cmp: Comparison) -> str:
    """A plain text table of :meth:`Comparison.summary`."""
    summ = cmp.summary()
    head = f"{'machine':<12} {'seeds':>5} {'median r^2':>10} {'r^2 IQR':>17} {'median r':>9} {'r IQR':>17} {'beats IS':>8}"
    lines = [head, "-" * len(head)]
    for name, row in summ.items():
        beats = f"{100 * row['beats_is']:.0f}%" if "beats_is" in row else "-"
        iqr2 = f"[{row['r2_q25']:.3f}, {row['r2_q75']:.3f}]"
        iqr = f"[{row['r_q25']:.3f}, {row['r_q75']:.3f}]"
        lines.append(
            f"{name:<12} {row['seeds']:>5} {row['median_r2']:>10.4f} {iqr2:>17} {row['median_r']:>9.4f} {iqr:>17} {beats:>8}"
        )
    lines.append("r: Pearson correlation over all pixels and channels with the network's sample; r^2: its square;")
    lines.append("beats IS: fraction of seeds where the machine's r^2 exceeds the IS machine's r^2.")
    if cmp.exact_check is not None:
        lines.append(format_compare_check(cmp.exact_check))
    return "\n".join(lines)


def write_report(cmp: Comparison, folder: str | Path, train_images: torch.Tensor | None = None,
                 grid_rows: int = 8) -> dict[str, Path]:
    """Write compare.json, compare.txt, scatter.png and grid.png into ``folder`` (no grid without samples,
    e.g. for runs merged by ``patchdb merge compare``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = ("compare.json", "compare.txt", "scatter.png") + (("grid.png",) if cmp.samples else ())
    paths = {k: folder / k for k in names}
    with atomic_write(paths["compare.json"]) as tmp:
        tmp.write_text(json.dumps(cmp.to_dict(), indent=1, default=str))
    with atomic_write(paths["compare.txt"]) as tmp:
        tmp.write_text(format_table(cmp) + "\n")
    save_scatter(cmp, paths["scatter.png"])
    if cmp.samples:
        save_comparison_grid(cmp, paths["grid.png"], train_images, grid_rows)
    return paths


def save_scatter(cmp: Comparison, path: Path) -> None:
    """Machine r^2 against IS r^2 per seed, with the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    base = cmp.r2(BASELINE).numpy() if BASELINE in cmp.r else None
    for name in cmp.r:
        if name == BASELINE:
            continue
        xs = base if base is not None else np.zeros(len(cmp.seeds))
        ax.scatter(xs, cmp.r2(name).numpy(), s=12, alpha=0.7, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("IS r^2 (squared Pearson with the network)")
    ax.set_ylabel("machine r^2 (squared Pearson with the network)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def save_comparison_grid(cmp: Comparison, path: Path, train_images: torch.Tensor | None, rows: int = 8) -> None:
    """Rows of seeds; columns: network | each machine (IS last) | nearest training image to the network
    sample. Column titles name each column; every machine image carries its r^2 with the network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(rows, len(cmp.seeds))
    order = ["net"] + [n for n in cmp.samples if n not in ("net", BASELINE)] + ([BASELINE] if BASELINE in cmp.samples else [])
    cols = [cmp.samples[n][:rows] for n in order]
    pretty = {"bbels": "bbELS", "els": "ELS", "ls": "LS", BASELINE: "IS"}
    titles = ["network"] + [pretty.get(n, n) for n in order[1:]]
    if train_images is not None:
        cols.append(train_images[nearest_images(cmp.samples["net"][:rows], train_images)].to(cols[0].dtype))
        titles.append("nearest training\nimage to network")
    fig, axes = plt.subplots(rows, len(cols), figsize=(1.35 * len(cols), 1.45 * rows + 0.4), squeeze=False)
    for i in range(rows):
        for j, col in enumerate(cols):
            ax = axes[i, j]
            img = ((col[i].detach().cpu().float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            name = order[j] if j < len(order) else None
            if name in cmp.r:
                ax.set_xlabel(f"r$^2$ = {float(cmp.r[name][i]) ** 2:.2f}", fontsize=7, labelpad=1)
            if j == 0:
                ax.set_ylabel(f"seed {cmp.seeds[i]}", fontsize=7)
            if i == 0:
                ax.set_title(titles[j], fontsize=8)
    fig.tight_layout(pad=0.3, h_pad=0.4, w_pad=0.2)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
