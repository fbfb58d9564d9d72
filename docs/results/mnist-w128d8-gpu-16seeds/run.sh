#!/usr/bin/env bash
# The H200-trained ResNet 128 x 8, calibrated and compared on the CPU, seeds 0-15.
# Reproduces the figures of docs/results/mnist-w128d8-gpu-16seeds/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-resnet-zeros-w128d8-gpu
# training (one H200, 60 s; benchmarks/gpu_eval.sh):
#   patchdb train $D --device cuda --width 128 --depth 8 --minutes 1 -b 128 --lr 1e-3 --lr-final 5e-5 --ema 0.999 --out "$OUT/ck"
# calibration: 25:01 wall, 1 thread, 3.5 GB
patchdb calibrate -c $CK $D --machine bbels --sizes 3,5,7,9,11,13 --num 2 --seed 1000 -b 2 --threads 1 -o "$OUT/schedule-bbels.json" $FORCE
# 16:28 and 14:10 wall side by side, 3.1 GB each
# seeds 0..7 and 8..15, two 1-thread runs side by side
compare_halves merged $CK/schedule-bbels.json 0 8 8 -c $CK $D
