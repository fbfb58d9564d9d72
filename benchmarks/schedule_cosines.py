"""Per sampler step: the size a calibration chose, its mean cosine, and the cosine it gives to other schedules' sizes.

    python benchmarks/schedule_cosines.py CALIBRATION.json SCHEDULE.json [SCHEDULE.json ...]

Each cell of another schedule reads `size (its mean cosine, difference to the chosen size's)`, all
from CALIBRATION.json's own cosine table (so: how much cosine that schedule gives up against the
calibrated network).
"""

import json
import sys
from pathlib import Path

if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit("usage: python benchmarks/schedule_cosines.py CALIBRATION.json SCHEDULE.json [SCHEDULE.json ...]")
    try:
        cal = json.loads(Path(sys.argv[1]).read_text())
        others = {Path(p).stem: json.loads(Path(p).read_text())["sizes"] for p in sys.argv[2:]}
        cand, mean_cos, chosen = cal["candidates"], cal["mean_cosine"], cal["sizes"]
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise SystemExit(f"error: cannot read a calibration or schedule JSON: {err}") from None
    print("step  chosen  cosine  " + "  ".join(f"{name:>30}" for name in others))
    for i, row in enumerate(mean_cos):
        best = row[cand.index(chosen[i])]
        cells = [f"{s[i]:>3} ({row[cand.index(s[i])]:.4f}, {row[cand.index(s[i])] - best:+.4f})" if s[i] in cand
                 else f"{s[i]:>3} (not a candidate)" for s in others.values()]
        print(f"{i + 1:>4} {chosen[i]:>7}  {best:.4f}  " + "  ".join(f"{c:>30}" for c in cells))
