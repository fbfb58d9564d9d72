#!/usr/bin/env bash
# Samples at scale (issue 28): throughput against workers and batch size, a kill -9 / resume check on the
# approximate engine over a real index, export and report. Reproduces docs/results/scale/README.md.
# Run from anywhere: paths are relative to the repository root. Data: ../shared/data (the project's copy);
# elsewhere pass --download or point DATA at your own copy. Outputs go to $OUT (default runs/scale).
# Wall times in the comments are the project's 2-core CPU, shared with other jobs (see README).
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/scale}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1

# 1. Index of 2,000 Fashion-MNIST images, the preset's sizes 3..17 (~6 min, 1 thread).
[ -f "$OUT/fm2k.h5" ] || patchdb build --dataset fashion-mnist --root "$DATA/fashion-mnist" --limit 2000 \
    --threads 1 --out "$OUT/fm2k.h5"

# 2. Samples/hour against workers (1, 2) and batch size (1, 2), 4 samples each, the recorded 20-step
#    schedule, 1 thread per worker (~25 min on the shared 2-core machine).
python benchmarks/scale.py measure --index "$OUT/fm2k.h5" --num 4 --workers 1,2 --batch 2 --threads 1 \
    --out "$OUT/rows-b2.json" | tee "$OUT/table-b2.md"
python benchmarks/scale.py measure --index "$OUT/fm2k.h5" --num 4 --workers 1 --batch 1 --threads 1 \
    --out "$OUT/rows-b1.json" | tee "$OUT/table-b1.md"
python benchmarks/scale.py estimate "$OUT/rows-b2.json" --samples 50000 --nodes 16 --cores 32 | tee "$OUT/estimate.txt"

# 3. kill -9 in the middle of a run on the approximate engine over a real index (200 Fashion-MNIST
#    images, sizes 3,5,7, 10 steps), then the same command: the set equals an uninterrupted run's bit for
#    bit and no shard was computed twice (~15 min).
[ -f "$OUT/fm200.h5" ] || patchdb build --dataset fashion-mnist --root "$DATA/fashion-mnist" --limit 200 \
    --scales 3,5,7 --threads 1 --out "$OUT/fm200.h5"
S="patchdb sample --index $OUT/fm200.h5 -s 3,3,3,5,5,5,7,7,7,7 --seeds 0-15 -b 2 --shard-size 2"
rm -rf "$OUT/whole" "$OUT/killed"
$S --out "$OUT/whole"
$S --out "$OUT/killed" & PID=$!
until [ -f "$OUT/killed/manifest.json" ] && python - "$OUT/killed" <<'PY'
import json, sys; sys.exit(0 if len(json.load(open(sys.argv[1] + "/manifest.json"))["shards"]) >= 3 else 1)
PY
do sleep 0.5; done
kill -9 $PID; wait $PID || true
$S --out "$OUT/killed"
python - "$OUT" <<'PY'
import collections, json, sys
import numpy as np
from patchdb.runs import open_run
out = sys.argv[1]
a, b = open_run(f"{out}/whole"), open_run(f"{out}/killed")
events = [json.loads(line) for line in open(f"{out}/killed/log.jsonl")]
counts = collections.Counter(e["shard"] for e in events if e["event"] == "shard")
print(f"bit-identical: {np.array_equal(a.samples, b.samples)}; samples {len(b)}; shard computations "
      f"{sum(counts.values())} for {len(b.metadata['shards'])} shards; most per shard {max(counts.values())}")
PY

# 4. Export and report on the killed-and-resumed run (a few seconds).
patchdb export "$OUT/killed" --png "$OUT/png" --npz "$OUT/killed.npz" --force
patchdb report "$OUT/killed" --out "$OUT/report" --force

# 5. Near-copy share, IS against bbELS on the same seeds and training images: bbELS is the run of step 3
#    (approximate, 200 images); IS exact over the same 200 images, the same schedule length and seeds
#    (a minute). IS over 2,000 images on 1,000 seeds (a few minutes); bbELS at 1,000 seeds would take
#    ~14 h here (~50 s/sample at N = 2,000), so it is not run.
patchdb sample --dataset fashion-mnist --root "$DATA/fashion-mnist" --limit 200 -m is -s 3,3,3,5,5,5,7,7,7,7 \
    --seeds 0-15 -b 2 --shard-size 2 --out "$OUT/is16"
patchdb report "$OUT/is16" --out "$OUT/is16-report" --force
patchdb sample --dataset fashion-mnist --root "$DATA/fashion-mnist" --limit 2000 -m is -s fashion-mnist-resnet-zeros \
    --seeds 0-999 -b 50 --out "$OUT/is1000"
patchdb report "$OUT/is1000" --out "$OUT/is1000-report" --force
