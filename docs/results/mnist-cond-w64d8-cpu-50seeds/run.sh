#!/usr/bin/env bash
# Class-conditional ResNet 64 x 8, seeds 0-49 (seed j -> class j mod 10).
# Reproduces the figures of docs/results/mnist-cond-w64d8-cpu-50seeds/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-cond-resnet-zeros-w64d8-cpu
# training: 58:05 wall, 2 threads. Retrain into $OUT:
#   OMP_WAIT_POLICY=PASSIVE patchdb train $D --arch resnet --padding zeros --conditional --width 64 --depth 8 --minutes 58 \
#       -b 32 --lr 1e-3 --lr-final 5e-5 --ema 0.999 --threads 2 --save-every 300 --out "$OUT/ck"
# calibration over 10 seeds (one per class): 23:14, 1 thread, 1.7 GB
OMP_NUM_THREADS=1 patchdb calibrate -c $CK $D --machine bbels --sizes 3,5,7,9,11,13 --num 10 --seed 1000 -b 10 \
    --threads 1 -o "$OUT/schedule-bbels.json" $FORCE
# comparison: 11:34, 1 thread, 1.4 GB
OMP_NUM_THREADS=1 patchdb compare -c $CK $D --num 50 --seed 0 -b 25 --threads 1 -s $CK/schedule-bbels.json --out "$OUT/compare" $FORCE
