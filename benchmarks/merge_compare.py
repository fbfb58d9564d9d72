"""Merge the compare.json of several `patchdb compare` runs over disjoint seed ranges into one table.

Per-seed r does not depend on the batching (each seed has its own noise), so runs over seeds 0-9,
10-19, ... merge into the table one run over 0-49 would give.

    python benchmarks/merge_compare.py OUT_FOLDER RUN_FOLDER [RUN_FOLDER ...]

Writes compare.json, compare.txt and scatter.png (the image grid needs the samples: copy the
grid.png of one of the runs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from patchdb.evaluation.compare import Comparison, format_table, save_scatter
from patchdb.store import atomic_write


def merge(folders: list[Path]) -> Comparison:
    seeds, r, labels = [], {}, []
    for folder in folders:
        data = json.loads((folder / "compare.json").read_text())
        seeds += data["seeds"]
        labels += data["labels"] or []
        for name, values in data["per_seed_r"].items():
            r.setdefault(name, []).extend(values)
    if len(set(seeds)) != len(seeds):
        raise SystemExit("the runs overlap in seeds; merge disjoint seed ranges only")
    tensors = {name: torch.tensor(v, dtype=torch.float64) for name, v in r.items()}
    return Comparison(seeds, torch.tensor(labels) if labels else None, {}, tensors,
                      {"merged_from": [str(f) for f in folders]})


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit("usage: python benchmarks/merge_compare.py OUT_FOLDER RUN_FOLDER [RUN_FOLDER ...]")
    out, runs = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    missing = [str(p) for p in runs if not (p / "compare.json").exists()]
    if missing:
        raise SystemExit(f"no compare.json in {', '.join(missing)}: pass folders written by "
                         "`patchdb compare --out` (or by this script)")
    cmp = merge(runs)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "compare.json") as tmp:
        tmp.write_text(json.dumps(cmp.to_dict(), indent=1))
    with atomic_write(out / "compare.txt") as tmp:
        tmp.write_text(format_table(cmp) + "\n")
    save_scatter(cmp, out / "scatter.png")
    print(format_table(cmp))
