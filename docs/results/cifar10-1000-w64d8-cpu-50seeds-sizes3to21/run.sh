#!/usr/bin/env bash
# CIFAR-10, ResNet 64 x 8 with the schedule over candidates 3..21, seeds 0-49.
# Reproduces the figures of docs/results/cifar10-1000-w64d8-cpu-50seeds-sizes3to21/README.md. Run from anywhere: paths are relative to
# the repository root. Data: ../shared/data (the project's copy); on your machine pass --download
# (torchvision fetches MNIST / Fashion-MNIST) or point DATA at your own copy.
# Outputs go to $OUT (default runs/cifar10-1000-w64d8-cpu-50seeds-sizes3to21); wall times in the comments are the project's 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/cifar10-1000-w64d8-cpu-50seeds-sizes3to21}
mkdir -p "$OUT"
D="--dataset $DATA/cifar10-jpeg.zip --split train --limit 1000"   # 100 images per class
CK=checkpoints/cifar10-1000-resnet-zeros-w64d8-cpu
S=docs/results/cifar10-1000-w64d8-cpu-50seeds/calibration-sizes3to21/sched.json
# 10:36 / 10:45 wall side by side
# seeds 0..24 and 25..49, two 1-thread runs side by side
OMP_NUM_THREADS=1 patchdb compare -c $CK $D --num 25 --seed 0 -b 25 --threads 1 -s $S --out "$OUT/cmp-0" & pid=$!
OMP_NUM_THREADS=1 patchdb compare -c $CK $D --num 25 --seed 25 -b 25 --threads 1 -s $S --out "$OUT/cmp-25"
wait $pid
patchdb merge compare --out "$OUT/merged" "$OUT/cmp-0" "$OUT/cmp-25"
cp "$OUT/cmp-0/grid.png" "$OUT/merged/"
python benchmarks/paired_compare.py docs/results/cifar10-1000-w64d8-cpu-50seeds/compare.json \
    "$OUT/merged/compare.json" --names sizes3to13,sizes3to21
