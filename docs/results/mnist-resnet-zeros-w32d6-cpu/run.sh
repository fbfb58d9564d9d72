#!/usr/bin/env bash
# The first ResNet 32 x 6 against bbELS over the first 1,000 MNIST test images, 5 seeds.
# Reproduces the figures of docs/results/mnist-resnet-zeros-w32d6-cpu/README.md. Run from anywhere: paths are relative to
# the repository root. Data: ../shared/data (the project's copy); on your machine pass --download
# (torchvision fetches MNIST / Fashion-MNIST) or point DATA at your own copy.
# Outputs go to $OUT (default runs/mnist-resnet-zeros-w32d6-cpu); wall times in the comments are the project's 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/mnist-resnet-zeros-w32d6-cpu}
mkdir -p "$OUT"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-resnet-zeros-w32d6-cpu
patchdb compare -c $CK $D --limit 1000 --num 5 -b 5 -s $CK/schedule-bbels.json --out "$OUT/compare"
