#!/usr/bin/env bash
# CIFAR-10, ResNet 64 x 8 with the schedule over candidates 3..21, seeds 0-49.
# Reproduces the figures of docs/results/cifar10-1000-w64d8-cpu-50seeds-sizes3to21/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset $DATA/cifar10-jpeg.zip --split train --limit 1000"   # 100 images per class
CK=checkpoints/cifar10-1000-resnet-zeros-w64d8-cpu
S=docs/results/cifar10-1000-w64d8-cpu-50seeds/calibration-sizes3to21/sched.json
# 10:36 / 10:45 wall side by side
# seeds 0..24 and 25..49, two 1-thread runs side by side
compare_halves merged $S 0 25 25 -c $CK $D
python benchmarks/paired_compare.py docs/results/cifar10-1000-w64d8-cpu-50seeds/compare.json \
    "$OUT/merged/compare.json" --names sizes3to13,sizes3to21
