#!/usr/bin/env bash
# ResNet 96 x 8, schedule over candidates 3..13, seeds 0-15.
# Reproduces the figures of docs/results/mnist-w96d8-cpu-16seeds/README.md. Run from anywhere: paths are relative to
# the repository root. Data: ../shared/data (the project's copy); on your machine pass --download
# (torchvision fetches MNIST / Fashion-MNIST) or point DATA at your own copy.
# Outputs go to $OUT (default runs/mnist-w96d8-cpu-16seeds); wall times in the comments are the project's 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/mnist-w96d8-cpu-16seeds}
mkdir -p "$OUT"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-resnet-zeros-w96d8-cpu
# 20:44 and 19:51 wall side by side, 3.1 GB each
# seeds 0..7 and 8..15, two 1-thread runs side by side
OMP_NUM_THREADS=1 patchdb compare -c $CK $D --num 8 --seed 0 -b 8 --threads 1 -s $CK/schedule-bbels.json --out "$OUT/cmp-0" & pid=$!
OMP_NUM_THREADS=1 patchdb compare -c $CK $D --num 8 --seed 8 -b 8 --threads 1 -s $CK/schedule-bbels.json --out "$OUT/cmp-8"
wait $pid
patchdb merge compare --out "$OUT/merged" "$OUT/cmp-0" "$OUT/cmp-8"
cp "$OUT/cmp-0/grid.png" "$OUT/merged/"
