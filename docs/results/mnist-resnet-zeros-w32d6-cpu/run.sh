#!/usr/bin/env bash
# The first ResNet 32 x 6 against bbELS over the first 1,000 MNIST test images, 5 seeds.
# Reproduces the figures of docs/results/mnist-resnet-zeros-w32d6-cpu/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-resnet-zeros-w32d6-cpu
patchdb compare -c $CK $D --limit 1000 --num 5 -b 5 -s $CK/schedule-bbels.json --out "$OUT/compare" $FORCE
