#!/usr/bin/env bash
# Training speed of the ResNet baselines on the CPU.
# Reproduces the figures of docs/results/train-speed/README.md. Run from anywhere: paths are relative to
# the repository root. Data: ../shared/data (the project's copy); on your machine pass --download
# (torchvision fetches MNIST / Fashion-MNIST) or point DATA at your own copy.
# Outputs go to $OUT (default runs/train-speed); wall times in the comments are the project's 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/train-speed}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
python benchmarks/train.py --sizes 32x8,48x8,64x8 --threads 1 --steps 5 | tee "$OUT/train-speed.txt"
python benchmarks/train.py --sizes 64x8 --steps 20 --compile | tee "$OUT/train-compile.txt"
