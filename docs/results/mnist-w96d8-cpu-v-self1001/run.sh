#!/usr/bin/env bash
# The v network with its own calibrated schedule, seeds 0-49.
# Reproduces the figures of docs/results/mnist-w96d8-cpu-v-self1001/README.md. Run from anywhere: paths are relative to
# the repository root. Data: ../shared/data (the project's copy); on your machine pass --download
# (torchvision fetches MNIST / Fashion-MNIST) or point DATA at your own copy.
# Outputs go to $OUT (default runs/mnist-w96d8-cpu-v-self1001); wall times in the comments are the project's 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/mnist-w96d8-cpu-v-self1001}
mkdir -p "$OUT"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CKV=checkpoints/mnist-resnet-zeros-v-w96d8-cpu
S=$CKV/schedule-bbels-seed1001.json
# 2:35:53 / 2:34:14 wall side by side (a day when this CPU ran ~3x slower than usual)
# seeds 0..24 and 25..49, two 1-thread runs side by side
OMP_NUM_THREADS=1 patchdb compare -c $CKV $D --num 25 --seed 0 -b 25 --threads 1 -s $S --out "$OUT/cmp-0" & pid=$!
OMP_NUM_THREADS=1 patchdb compare -c $CKV $D --num 25 --seed 25 -b 25 --threads 1 -s $S --out "$OUT/cmp-25"
wait $pid
patchdb merge compare --out "$OUT/seeds0-49" "$OUT/cmp-0" "$OUT/cmp-25"
cp "$OUT/cmp-0/grid.png" "$OUT/seeds0-49/"
python benchmarks/paired_compare.py docs/results/mnist-w96d8-cpu-v-rollout4/seeds0-49/compare.json \
    "$OUT/seeds0-49/compare.json" --names transferred,self1001 --png "$OUT/seeds0-49/paired.png" \
    | tee "$OUT/seeds0-49/paired-vs-transferred.txt"
