#!/usr/bin/env bash
# Training speed of the ResNet baselines on the CPU.
# Reproduces the figures of docs/results/train-speed/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
export OMP_NUM_THREADS=1
python benchmarks/train.py --sizes 32x8,48x8,64x8 --threads 1 --steps 5 | tee "$OUT/train-speed.txt"
python benchmarks/train.py --sizes 64x8 --steps 20 --compile | tee "$OUT/train-compile.txt"
