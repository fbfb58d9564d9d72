#!/usr/bin/env bash
# CIFAR-10 JPEG (first 1,000 training images), ResNet 64 x 8, seeds 0-49.
# Reproduces the figures of docs/results/cifar10-1000-w64d8-cpu-50seeds/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset $DATA/cifar10-jpeg.zip --split train --limit 1000"   # 100 images per class
CK=checkpoints/cifar10-1000-resnet-zeros-w64d8-cpu
# training: 35:05, 1 thread. Retrain into $OUT:
#   OMP_NUM_THREADS=1 patchdb train $D --arch resnet --padding zeros --width 64 --depth 8 --minutes 35 -b 32 \
#       --lr 1e-3 --lr-final 5e-5 --ema 0.999 --threads 1 --out "$OUT/ck"
# calibration: 8:30, 1.5 GB
patchdb calibrate -c $CK $D --machine bbels --sizes 3,5,7,9,11,13 --num 2 --seed 1000 -b 2 --threads 1 -o "$OUT/schedule-bbels.json" $FORCE
# comparison: 24:31, 1.4 GB
patchdb compare -c $CK $D --num 50 --seed 0 -b 25 --threads 1 -s $CK/schedule-bbels.json --out "$OUT/compare" $FORCE
# candidates up to the receptive field (3..21): one seed per core, 20:59 / 21:17 wall
calibrate_seeds cal "1000 1001" -c $CK $D --machine bbels
patchdb merge calibrate --out "$OUT/sched.json" "$OUT/cal-1000.json" "$OUT/cal-1001.json" $FORCE
