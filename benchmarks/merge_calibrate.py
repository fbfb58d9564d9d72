"""Merge calibrations of one network into one schedule: more seeds, or more candidate sizes.

`patchdb calibrate --num 1 --seed 1000` and `--seed 1001`, run side by side as two 1-thread
processes, take half the wall time of one 2-seed run on a 2-core machine (parts with the same
sizes and disjoint seeds are joined along the seeds). A later run over the same seeds with other
`--sizes` adds those sizes without redoing the others (parts with the same seeds are joined along
the sizes; a size both computed must agree). Each JSON keeps its full per-seed cosine table, so the
merged schedule is the per-step median one run over all seeds and sizes would choose (same network
weights, machine, engine, dataset and steps, checked).

    python benchmarks/merge_calibrate.py [--criterion cosine|rollout] OUT.json PART.json [PART.json ...]

Writes OUT.json (usable as `--schedule`) and its heat map OUT.png. The schedule is chosen by
`--criterion` (default: the first part's).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from patchdb.errors import PatchdbError
from patchdb.evaluation.calibrate import merge_calibrations, read_calibration, write_calibration

if __name__ == "__main__":
    args, criterion = sys.argv[1:], None
    if args[:1] == ["--criterion"] and len(args) > 1:
        criterion, args = args[1], args[2:]
    if len(args) < 2:
        raise SystemExit("usage: python benchmarks/merge_calibrate.py [--criterion cosine|rollout] OUT.json PART.json [PART.json ...]")
    out, parts = Path(args[0]), [Path(p) for p in args[1:]]
    try:
        cals = [read_calibration(json.loads(p.read_text()), str(p)) for p in parts]
        merged = merge_calibrations(cals, criterion)
        merged.settings["merged_from"] = [str(p) for p in parts]
        path, png = write_calibration(merged, out)
    except (OSError, json.JSONDecodeError, KeyError, PatchdbError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"schedule {','.join(str(k) for k in merged.schedule.sizes)} over seeds {merged.seeds}")
    print(f"wrote {path} and {png}")
