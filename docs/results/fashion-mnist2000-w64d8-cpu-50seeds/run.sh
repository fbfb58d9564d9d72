#!/usr/bin/env bash
# Fashion-MNIST (first 2,000 training images), ResNet 64 x 8, seeds 0-49.
# Reproduces the figures of docs/results/fashion-mnist2000-w64d8-cpu-50seeds/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset fashion-mnist --root $DATA/fashion-mnist --split train --limit 2000"
CK=checkpoints/fashion-mnist2000-resnet-zeros-w64d8-cpu
# training: 50 min under nice 19 (855 steps), then resumed for 35 more minutes (4,647 steps). Retrain into $OUT:
#   patchdb train $D --arch resnet --padding zeros --width 64 --depth 8 --minutes 50 -b 32 --lr 1e-3 --lr-final 5e-5 \
#       --ema 0.999 --threads 1 --out "$OUT/ck"
#   OMP_NUM_THREADS=1 patchdb train $D --arch resnet --padding zeros --width 64 --depth 8 --minutes 85 -b 32 --lr 1e-3 \
#       --lr-final 5e-5 --ema 0.999 --threads 1 --save-every 300 --out "$OUT/ck" --resume
# calibration: 8:06, 1.4 GB
patchdb calibrate -c $CK $D --machine bbels --sizes 3,5,7,9,11,13,15 --num 2 --seed 1000 -b 2 --threads 1 -o "$OUT/schedule-bbels.json" $FORCE
# comparison: 21:44, 1.2 GB
patchdb compare -c $CK $D --num 50 --seed 0 -b 25 --threads 1 -s $CK/schedule-bbels.json --out "$OUT/compare" $FORCE
# candidates up to the receptive field (3..21): one seed per core, 11:47 wall each
calibrate_seeds cal "1000 1001" -c $CK $D --machine bbels
patchdb merge calibrate --out "$OUT/sched.json" "$OUT/cal-1000.json" "$OUT/cal-1001.json" $FORCE
