#!/usr/bin/env bash
# ResNet 96 x 8, schedule over candidates 3..13, seeds 0-15.
# Reproduces the figures of docs/results/mnist-w96d8-cpu-16seeds/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-resnet-zeros-w96d8-cpu
# 20:44 and 19:51 wall side by side, 3.1 GB each
# seeds 0..7 and 8..15, two 1-thread runs side by side
compare_halves merged $CK/schedule-bbels.json 0 8 8 -c $CK $D
