"""Merge the JSON of several `patchdb validate --json-out` runs over disjoint seeds into one summary.

Each seed's r^2 between the approximate and the exact final sample depends only on its noise (and
its label, seed mod C with `--label all`), not on the batch it ran in, so runs over seeds 0-4, 5-9,
... merge into what one run over 0-9 would give. Runs must agree on every setting except the batch
size and the ``--exact-samples`` file; seconds per sample are listed per run (they depend on the batch and on what else ran).

    python benchmarks/merge_validate.py RUN.json [RUN.json ...] [--min-r2 0.99]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import click

#: Settings that may differ between merged runs: the batch, and where exact samples were kept
#: (``--exact-samples``: a cache, which changes no number).
FREE = {"batch_size", "exact_samples"}


def merge(paths: list[Path]) -> tuple[dict[int, tuple[float, object]], list[dict]]:
    """Per-seed (r^2, label) over all runs, and the runs (for their timings). Exits with one line on a
    mismatch. The label is "?" for runs written before validate recorded labels."""
    runs = [json.loads(p.read_text()) | {"path": str(p)} for p in paths]
    fixed = [{k: v for k, v in run["settings"].items() if k not in FREE} for run in runs]
    for run, settings in zip(runs[1:], fixed[1:]):
        if settings != fixed[0]:
            diff = sorted(k for k in settings.keys() | fixed[0].keys() if settings.get(k) != fixed[0].get(k))
            sys.exit(f"{run['path']} differs from {runs[0]['path']} in {', '.join(diff)}; merge runs of one setting only")
    per_seed: dict[int, tuple[float, object]] = {}
    for run in runs:
        labels = run.get("labels") or ([None] * len(run["seeds"]) if run["settings"].get("label") is None else None)
        for j, (seed, r2) in enumerate(zip(run["seeds"], run["r2"])):
            if seed in per_seed:
                sys.exit(f"seed {seed} is in more than one run ({run['path']}); merge disjoint seeds only")
            per_seed[seed] = (r2, "?" if labels is None else labels[j])
    return dict(sorted(per_seed.items())), runs


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--min-r2", type=float, default=0.99, show_default=True, help="Threshold to count seeds against.")
def main(runs: tuple[Path, ...], min_r2: float) -> None:
    """Print the merged per-seed r^2, their median and minimum, and each run's seconds per sample."""
    per_seed, loaded = merge(list(runs))
    settings = {k: v for k, v in loaded[0]["settings"].items() if k not in FREE}
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items() if k != "schedule"))
    print("| seed | label | r^2 |")
    print("|---|---|---|")
    for seed, (r2, label) in per_seed.items():
        print(f"| {seed} | {'-' if label is None else label} | {r2:.5f} |")
    values = [r2 for r2, _ in per_seed.values()]
    above = sum(v >= min_r2 for v in values)
    print(f"seeds {len(values)}: median r^2 {statistics.median(values):.5f}, min {min(values):.5f}, "
          f"{above}/{len(values)} at or above {min_r2}")
    for run in loaded:
        sec = run["seconds_per_sample"]
        print(f"{run['path']}: seeds {run['seeds'][0]}-{run['seeds'][-1]}, batch {run['settings']['batch_size']}, "
              f"exact {sec['exact']:.1f} s/sample, approx {sec['approx']:.1f} s/sample ({run['speedup']:.1f}x)")


if __name__ == "__main__":
    main()
