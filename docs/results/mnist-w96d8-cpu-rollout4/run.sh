#!/usr/bin/env bash
# ResNet 96 x 8: rollout schedule over four calibration seeds, seeds 0-49 and held-out 50-99.
# Reproduces the figures of docs/results/mnist-w96d8-cpu-rollout4/README.md. Run from anywhere: paths are relative to
# the repository root. Data: ../shared/data (the project's copy); on your machine pass --download
# (torchvision fetches MNIST / Fashion-MNIST) or point DATA at your own copy.
# Outputs go to $OUT (default runs/mnist-w96d8-cpu-rollout4); wall times in the comments are the project's 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/mnist-w96d8-cpu-rollout4}
mkdir -p "$OUT"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-resnet-zeros-w96d8-cpu
# calibration seeds 1002 and 1003 (1000, 1001: ../mnist-w96d8-cpu-50seeds-rollout/run.sh): ~50-65 min each, 1 thread
pids=()
for s in 1002 1003; do
    OMP_NUM_THREADS=1 patchdb calibrate -c $CK $D --machine bbels --num 1 --seed $s -b 1 --threads 1 \
        --criterion rollout -o "$OUT/cal-$s.json" & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
P=docs/results/mnist-w96d8-cpu-50seeds-rollout/calibration-parts
patchdb merge calibrate --criterion rollout --out "$OUT/schedule-bbels-rollout4.json" $P/cal-100[0-3].json
patchdb merge calibrate --criterion cosine --out "$OUT/schedule-bbels-cosine4.json" $P/cal-100[0-3].json
S=$CK/schedule-bbels-rollout4.json
# seeds 0-49, then the held-out seeds 50-99 (1:21:47 / 1:21:46 wall side by side on a slow day)
# seeds 0..24 and 25..49, two 1-thread runs side by side
OMP_NUM_THREADS=1 patchdb compare -c $CK $D --num 25 --seed 0 -b 25 --threads 1 -s $S --out "$OUT/cmp-0" & pid=$!
OMP_NUM_THREADS=1 patchdb compare -c $CK $D --num 25 --seed 25 -b 25 --threads 1 -s $S --out "$OUT/cmp-25"
wait $pid
patchdb merge compare --out "$OUT/seeds0-49" "$OUT/cmp-0" "$OUT/cmp-25"
cp "$OUT/cmp-0/grid.png" "$OUT/seeds0-49/"
# seeds 50..74 and 75..99, two 1-thread runs side by side
OMP_NUM_THREADS=1 patchdb compare -c $CK $D --num 25 --seed 50 -b 25 --threads 1 -s $S --out "$OUT/cmp-50" & pid=$!
OMP_NUM_THREADS=1 patchdb compare -c $CK $D --num 25 --seed 75 -b 25 --threads 1 -s $S --out "$OUT/cmp-75"
wait $pid
patchdb merge compare --out "$OUT/seeds50-99" "$OUT/cmp-50" "$OUT/cmp-75"
cp "$OUT/cmp-50/grid.png" "$OUT/seeds50-99/"
