#!/usr/bin/env bash
# ResNet 64 x 8 trained on the CPU, seeds 0-49.
# Reproduces the figures of docs/results/mnist-w64d8-cpu-50seeds/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-resnet-zeros-w64d8-cpu
# training: 55 min, 2 threads (the committed checkpoint is what the figures used). Retrain into $OUT:
#   OMP_WAIT_POLICY=PASSIVE patchdb train $D --arch resnet --padding zeros --width 64 --depth 8 --minutes 55 \
#       -b 32 --lr 1e-3 --lr-final 5e-5 --ema 0.999 --threads 2 --out "$OUT/ck"
# calibration: 34 min, 1 thread, all 10,000 images, 6.9 GB
patchdb calibrate -c $CK $D --machine bbels --sizes 3,5,7,9,11,13 --num 2 --seed 1000 -b 2 --threads 1 -o "$OUT/schedule-bbels.json" $FORCE
# seeds 0-29 and 30-49, two 1-thread runs side by side (49:24 and 34:27 wall)
# seeds 0..29 and 30..49, two 1-thread runs side by side
compare_halves merged $CK/schedule-bbels.json 0 30 20 -c $CK $D
