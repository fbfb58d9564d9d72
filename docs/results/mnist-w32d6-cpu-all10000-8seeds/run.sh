#!/usr/bin/env bash
# The first ResNet 32 x 6 against bbELS over all 10,000 MNIST test images, 8 seeds.
# Reproduces the figures of docs/results/mnist-w32d6-cpu-all10000-8seeds/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-resnet-zeros-w32d6-cpu
# 894 s on 2 idle threads (before the distinct-window scan)
patchdb compare -c $CK $D --num 8 -b 8 --threads 2 -s $CK/schedule-bbels.json --out "$OUT/compare" $FORCE
