"""Seed-by-seed comparison of two `patchdb compare` results over the same seeds (e.g. two schedules).

The medians of two runs can move apart by less than the seeds' spread; the paired view says on how
many seeds one beats the other and by how much. Both runs must hold the same seeds (and labels).

    python benchmarks/paired_compare.py A/compare.json B/compare.json [--machine bbels] [--png OUT.png]

Prints, for r^2 of the machine: both medians, how many seeds B beats A, the median / mean / range of
B - A, and how many seeds reach 0.85 in each; checks that the baseline (IS) is the same in both runs.
With --png, draws B's r^2 against A's per seed with the diagonal.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from patchdb.store import atomic_write


def load(path: Path) -> dict:
    data = json.loads(path.read_text())
    if "per_seed_r" not in data:
        raise SystemExit(f"error: {path} is not a compare.json (no per_seed_r)")
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--machine", default="bbels")
    ap.add_argument("--png", type=Path)
    ap.add_argument("--names", default="A,B", help="labels of the two runs, comma separated")
    args = ap.parse_args()
    a, b = load(args.a), load(args.b)
    if a["seeds"] != b["seeds"] or a.get("labels") != b.get("labels"):
        raise SystemExit("error: the two runs hold different seeds or labels; compare runs over the same seeds")
    for run, path in ((a, args.a), (b, args.b)):
        if args.machine not in run["per_seed_r"]:
            raise SystemExit(f"error: {path} has no machine '{args.machine}' (it has {', '.join(run['per_seed_r'])})")
    name_a, name_b = (args.names.split(",") + ["B"])[:2]
    ra, rb = np.array(a["per_seed_r"][args.machine]) ** 2, np.array(b["per_seed_r"][args.machine]) ** 2
    d = rb - ra
    print(f"{len(ra)} seeds, {args.machine} r^2: median {name_a} {np.median(ra):.4f}, {name_b} {np.median(rb):.4f}")
    print(f"{name_b} higher on {(d > 0).sum()}/{len(d)} seeds; {name_b} - {name_a}: median {np.median(d):+.4f}, "
          f"mean {d.mean():+.4f}, range {d.min():+.4f} .. {d.max():+.4f}")
    print(f"seeds with r^2 >= 0.85: {name_a} {(ra >= 0.85).sum()}, {name_b} {(rb >= 0.85).sum()}")
    if "is" in a["per_seed_r"] and "is" in b["per_seed_r"]:
        gap = np.abs(np.array(a["per_seed_r"]["is"]) - np.array(b["per_seed_r"]["is"])).max()
        print(f"IS r, largest difference between the runs: {gap:.1e} (0: the same network samples and baseline)")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.6, 4.6))
        ax.scatter(ra, rb, s=14)
        lo = min(ra.min(), rb.min()) - 0.02
        ax.plot([lo, 1], [lo, 1], color="grey", lw=0.8)
        ax.axhline(0.85, color="red", lw=0.5, ls=":")
        ax.axvline(0.85, color="red", lw=0.5, ls=":")
        ax.set_xlabel(f"{name_a}: {args.machine} r^2 (median {np.median(ra):.3f})")
        ax.set_ylabel(f"{name_b}: {args.machine} r^2 (median {np.median(rb):.3f})")
        ax.set_title(f"{name_b} higher on {(d > 0).sum()}/{len(d)} seeds", fontsize=9)
        fig.tight_layout()
        with atomic_write(args.png) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
