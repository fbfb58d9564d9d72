#!/usr/bin/env bash
# Samples at scale (issue 28): throughput against workers and batch size, a kill -9 / resume check on the
# approximate engine over a real index, export and report. Reproduces docs/results/scale/README.md.
# Run from anywhere: paths are relative to the repository root. Data: ../shared/data (the project's copy);
# elsewhere pass --download or point DATA at your own copy. Outputs go to $OUT (default runs/scale).
# Wall times in the comments are the project's 2-core CPU, shared with other jobs (see README).
. "$(dirname "$0")/../common.sh"
export OMP_NUM_THREADS=1

# 1. Index of 2,000 Fashion-MNIST images, the preset's sizes 3..17 (24 min, 1 thread, on the shared machine).
[ -f "$OUT/fm2k.h5" ] || patchdb build --dataset fashion-mnist --root "$DATA/fashion-mnist" --limit 2000 \
    --threads 1 --out "$OUT/fm2k.h5"

# 2. Samples/hour against workers (1, 2) and batch size (1, 2), 4 samples each, 1 thread per worker, on the
#    200-image index of step 3 with its 10-step schedule (~6 min per row on the shared machine), and one row
#    on the 2,000-image index with the recorded 20-step preset (~15 min).
[ -f "$OUT/fm200.h5" ] || patchdb build --dataset fashion-mnist --root "$DATA/fashion-mnist" --limit 200 \
    --scales 3,5,7 --threads 1 --out "$OUT/fm200.h5"
B="python benchmarks/scale.py measure --index $OUT/fm200.h5 --schedule 3,3,3,5,5,5,7,7,7,7 --num 4 --threads 1"
$B --workers 1,2 --batch 2 --out "$OUT/fm200-b2.json" | tee "$OUT/fm200-b2.md"
$B --workers 1 --batch 1 --out "$OUT/fm200-b1.json" | tee "$OUT/fm200-b1.md"
python benchmarks/scale.py measure --index "$OUT/fm2k.h5" --num 2 --workers 1 --batch 2 --threads 1 \
    --out "$OUT/fm2k-b2.json" | tee "$OUT/fm2k-b2.md"
python benchmarks/scale.py estimate "$OUT/fm200-b2.json" --samples 50000 --nodes 16 --cores 32 | tee "$OUT/estimate-fm200.txt"
python benchmarks/scale.py estimate "$OUT/fm2k-b2.json" --samples 50000 --nodes 16 --cores 32 | tee "$OUT/estimate-fm2k.txt"

# 3. kill -9 in the middle of a run on the approximate engine over a real index (200 Fashion-MNIST
#    images, sizes 3,5,7, 10 steps), then the same command: the set equals an uninterrupted run's bit for
#    bit and no shard was computed twice. The uninterrupted run has seeds 0-15 (19 min), the killed one
#    seeds 0-7 (killed after 2 of 4 shards; ~15 min in all): a seed has the same bits in any seed list.
[ -f "$OUT/fm200.h5" ] || patchdb build --dataset fashion-mnist --root "$DATA/fashion-mnist" --limit 200 \
    --scales 3,5,7 --threads 1 --out "$OUT/fm200.h5"
S="patchdb sample --index $OUT/fm200.h5 -s 3,3,3,5,5,5,7,7,7,7 -b 2 --shard-size 2"
rm -rf "$OUT/whole" "$OUT/killed"
$S --seeds 0-15 --out "$OUT/whole"
$S --seeds 0-7 --out "$OUT/killed" & PID=$!
until [ -f "$OUT/killed/manifest.json" ] && python - "$OUT/killed" <<'PY'
import json, sys; sys.exit(0 if len(json.load(open(sys.argv[1] + "/manifest.json"))["shards"]) >= 2 else 1)
PY
do sleep 0.5; done
kill -9 $PID; wait $PID || true
$S --seeds 0-7 --out "$OUT/killed"
python - "$OUT" <<'PY'
import collections, json, sys
import numpy as np
from patchdb.runs import open_run
out = sys.argv[1]
a, b = open_run(f"{out}/whole"), open_run(f"{out}/killed")
assert a.seeds[:8].tolist() == b.seeds.tolist()
events = [json.loads(line) for line in open(f"{out}/killed/log.jsonl")]
counts = collections.Counter(e["shard"] for e in events if e["event"] == "shard")
print(f"bit-identical: {np.array_equal(a.samples[:8], b.samples)}; samples {len(b)}; shard computations "
      f"{sum(counts.values())} for {len(b.metadata['shards'])} shards; most per shard {max(counts.values())}")
PY

# 4. Export and report on the uninterrupted bbELS run (seconds).
patchdb export "$OUT/whole" --png "$OUT/png" --npz "$OUT/whole.npz" --force
patchdb report "$OUT/whole" --out "$OUT/whole-report" --force

# 5. Near-copy share, IS against bbELS on the same seeds and training images: bbELS is the run of step 3
#    (approximate, 200 images, seeds 0-15); IS exact over the same 200 images, the same 10 steps and seeds
#    (a minute). IS over 2,000 images on 1,000 seeds (~2 min); bbELS on 1,000 seeds would take hours
#    here, so it is not run.
patchdb sample --dataset fashion-mnist --root "$DATA/fashion-mnist" --limit 200 -m is -s 3,3,3,5,5,5,7,7,7,7 \
    --seeds 0-15 -b 2 --shard-size 2 --out "$OUT/is16" $FORCE
patchdb report "$OUT/is16" --out "$OUT/is16-report" --force
patchdb sample --dataset fashion-mnist --root "$DATA/fashion-mnist" --limit 2000 -m is -s fashion-mnist-resnet-zeros \
    --seeds 0-999 -b 50 --out "$OUT/is1000" $FORCE
patchdb report "$OUT/is1000" --out "$OUT/is1000-report" --force
# 1,000 seeds of bbELS and IS on the same seeds (exact, first 50 images, 5 steps; 7.5 min + 6 s, one thread),
# then the report of each: near-copy share 0.000 against 1.000.
D50="--dataset fashion-mnist --root $DATA/fashion-mnist --limit 50 -s 3,3,5,5,7 --seeds 0-999 -b 50 --shard-size 100"
patchdb sample $D50 -m bbels --out "$OUT/bbels1000-n50" $FORCE
patchdb sample $D50 -m is --out "$OUT/is1000-n50" $FORCE
patchdb report "$OUT/bbels1000-n50" --out "$OUT/bbels1000-n50-report" --force
patchdb report "$OUT/is1000-n50" --out "$OUT/is1000-n50-report" --force

# kill -9 of a 512-sample run on the approximate engine (first 50 images, sizes 3,5,7, 16 shards of 32;
# 5.7 min uninterrupted, then killed after 6 shards and resumed in 3.4 min, one thread).
[ -f "$OUT/fm50.h5" ] || patchdb build --dataset fashion-mnist --root "$DATA/fashion-mnist" --limit 50 \
    --scales 3,5,7 --threads 1 --out "$OUT/fm50.h5"
S512="patchdb sample --index $OUT/fm50.h5 -s 3,3,5,5,7 --seeds 0-511 -b 32 --shard-size 32"
rm -rf "$OUT/whole512" "$OUT/killed512"
$S512 --out "$OUT/whole512"
$S512 --out "$OUT/killed512" & PID=$!
until [ -f "$OUT/killed512/manifest.json" ] && python - "$OUT/killed512" <<'PY'
import json, sys; sys.exit(0 if len(json.load(open(sys.argv[1] + "/manifest.json"))["shards"]) >= 6 else 1)
PY
do sleep 0.2; done
kill -9 $PID; wait $PID || true
$S512 --out "$OUT/killed512"
python - "$OUT" <<'PY'
import collections, json, sys
import numpy as np
from patchdb.runs import open_run
out = sys.argv[1]
a, b = open_run(f"{out}/whole512"), open_run(f"{out}/killed512")
events = [json.loads(line) for line in open(f"{out}/killed512/log.jsonl")]
counts = collections.Counter(e["shard"] for e in events if e["event"] == "shard")
print(f"bit-identical: {np.array_equal(a.samples, b.samples) and np.array_equal(a.seeds, b.seeds)}; samples {len(b)}; "
      f"shard computations {sum(counts.values())} for {len(b.metadata['shards'])} shards; most per shard {max(counts.values())}")
PY

# CIFAR-10, all 50,000 training images (the evening section): the whole-schedule index (1:28 wall with 2
# threads on the shared machine), then samples per hour with the setting validated on Fashion-MNIST;
# and the same Fashion-MNIST row with it (indexes/fmnist-bbels.h5: docs/results/throughput/run.sh).
[ -f indexes/cifar10-bbels.h5 ] || OMP_NUM_THREADS=2 patchdb build --dataset "$DATA/cifar10-jpeg.zip" --machine bbels \
    --scales cifar10-resnet-zeros --memory 8GiB --out indexes/cifar10-bbels.h5
X="--scan-cap 0.5 --reuse 4 --sample-above 0.9 --query-scan"  # FAISS's search, as these rows were measured
M="env PATCHDB_INDEX_MEMORY=4GiB python benchmarks/scale.py measure --threads 1"
$M --index indexes/cifar10-bbels.h5 --num 16 --workers 1 --batch 16 --extra "$X" --out "$OUT/cifar50k-w1-b16.json"   # 5 min
$M --index indexes/cifar10-bbels.h5 --num 128 --workers 2 --batch 64 --extra "$X" --out "$OUT/cifar50k-w2-b64.json"  # 15 min
$M --index indexes/fmnist-bbels.h5 --num 128 --workers 2 --batch 64 --extra "$X" --out "$OUT/fm60k-w2-b64-sa09.json" # 26 min
# two CIFAR-10 workers at batch 16 were OOM-killed with a 4 GiB budget on the 24 GB machine; with 2 GiB (5.5 min):
PATCHDB_INDEX_MEMORY=2GiB python benchmarks/scale.py measure --threads 1 --index indexes/cifar10-bbels.h5 --num 32 \
    --workers 2 --batch 16 --extra "$X" --out "$OUT/cifar50k-w2-b16.json"
