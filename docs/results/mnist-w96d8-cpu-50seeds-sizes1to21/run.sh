#!/usr/bin/env bash
# ResNet 96 x 8 recalibrated with candidates up to its receptive field (1..21), seeds 0-49.
# Reproduces the figures of docs/results/mnist-w96d8-cpu-50seeds-sizes1to21/README.md. Run from anywhere: paths are relative to
# the repository root. Data: ../shared/data (the project's copy); on your machine pass --download
# (torchvision fetches MNIST / Fashion-MNIST) or point DATA at your own copy.
# Outputs go to $OUT (default runs/mnist-w96d8-cpu-50seeds-sizes1to21); wall times in the comments are the project's 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/mnist-w96d8-cpu-50seeds-sizes1to21}
mkdir -p "$OUT"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-resnet-zeros-w96d8-cpu
# 48:03 and 46:44 wall side by side (1 thread each), 3.5 GB each
pids=()
for s in 1000 1001; do
    OMP_NUM_THREADS=1 patchdb calibrate -c $CK $D --machine bbels --sizes 3,5,7,9,11,13,15,17,19,21 \
        --num 1 --seed $s -b 1 --threads 1 -o "$OUT/cal96-$s.json" & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
# is a 1x1 patch ever better at low noise? (1:29 each)
pids=()
for s in 1000 1001; do
    OMP_NUM_THREADS=1 patchdb calibrate -c $CK $D --machine bbels --sizes 1,3 --num 1 --seed $s -b 1 --threads 1 -o "$OUT/cal96k1-$s.json"
done
patchdb merge calibrate --out "$OUT/sched-3to21.json" "$OUT/cal96-1000.json" "$OUT/cal96-1001.json"
patchdb merge calibrate --out "$OUT/k1.json" "$OUT/cal96k1-1000.json" "$OUT/cal96k1-1001.json"
patchdb merge calibrate --out "$OUT/schedule-bbels-sizes1to21.json" "$OUT/sched-3to21.json" "$OUT/k1.json"
S=$CK/schedule-bbels-sizes1to21.json
# 50 seeds as four 1-thread runs, two side by side (26-29 min each)
# seeds 0..12 and 13..24, two 1-thread runs side by side
OMP_NUM_THREADS=1 patchdb compare -c $CK $D --num 13 --seed 0 -b 13 --threads 1 -s $S --out "$OUT/cmp-0" & pid=$!
OMP_NUM_THREADS=1 patchdb compare -c $CK $D --num 12 --seed 13 -b 12 --threads 1 -s $S --out "$OUT/cmp-13"
wait $pid
patchdb merge compare --out "$OUT/part-a" "$OUT/cmp-0" "$OUT/cmp-13"
cp "$OUT/cmp-0/grid.png" "$OUT/part-a/"
# seeds 25..37 and 38..49, two 1-thread runs side by side
OMP_NUM_THREADS=1 patchdb compare -c $CK $D --num 13 --seed 25 -b 13 --threads 1 -s $S --out "$OUT/cmp-25" & pid=$!
OMP_NUM_THREADS=1 patchdb compare -c $CK $D --num 12 --seed 38 -b 12 --threads 1 -s $S --out "$OUT/cmp-38"
wait $pid
patchdb merge compare --out "$OUT/part-b" "$OUT/cmp-25" "$OUT/cmp-38"
cp "$OUT/cmp-25/grid.png" "$OUT/part-b/"
patchdb merge compare --out "$OUT/merged" "$OUT/cmp-0" "$OUT/cmp-13" "$OUT/cmp-25" "$OUT/cmp-38"
