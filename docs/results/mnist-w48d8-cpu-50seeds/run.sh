#!/usr/bin/env bash
# ResNet 48 x 8 on one core (narrower, more steps), seeds 0-49.
# Reproduces the figures of docs/results/mnist-w48d8-cpu-50seeds/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-resnet-zeros-w48d8-cpu
# training: 60:04 wall, 1 thread, 12,037 steps (the 32 x 8 ran beside it with --width 32). Retrain into $OUT:
#   OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE patchdb train $D --arch resnet --padding zeros --width 48 --depth 8 \
#       --minutes 60 -b 32 --lr 1e-3 --lr-final 5e-5 --ema 0.999 --threads 1 --save-every 300 --out "$OUT/ck"
# calibration: 15:46 wall, 2 threads, 3.5 GB
patchdb calibrate -c $CK $D --machine bbels --sizes 3,5,7,9,11,13 --num 2 --seed 1000 -b 2 --threads 2 -o "$OUT/schedule-bbels.json" $FORCE
# 46:28 and 50:18 wall side by side
# seeds 0..24 and 25..49, two 1-thread runs side by side
compare_halves merged $CK/schedule-bbels.json 0 25 25 -c $CK $D
