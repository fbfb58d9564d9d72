#!/usr/bin/env bash
# ResNet 96 x 8 trained on the CPU, schedule over candidates 3..13, seeds 0-49.
# Reproduces the figures of docs/results/mnist-w96d8-cpu-50seeds/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-resnet-zeros-w96d8-cpu
# training: 59:05 wall, 2 threads (the committed checkpoint is what the figures used). Retrain into $OUT:
#   OMP_WAIT_POLICY=PASSIVE patchdb train $D --arch resnet --padding zeros --width 96 --depth 8 --minutes 59 \
#       -b 32 --lr 1e-3 --lr-final 5e-5 --ema 0.999 --threads 2 --out "$OUT/ck"
# calibration: 14:34 wall, 2 threads, 3.5 GB
patchdb calibrate -c $CK $D --machine bbels --sizes 3,5,7,9,11,13 --num 2 --seed 1000 -b 2 --threads 2 -o "$OUT/schedule-bbels.json" $FORCE
S=$CK/schedule-bbels.json
# seeds 0-15 (../mnist-w96d8-cpu-16seeds/run.sh) and 16-49: 43:42 and 42:56 wall side by side
# seeds 16..32 and 33..49, two 1-thread runs side by side
compare_halves seeds16-49 $S 16 17 17 -c $CK $D
patchdb merge compare --out "$OUT/merged" docs/results/mnist-w96d8-cpu-16seeds "$OUT/cmp-16" "$OUT/cmp-33" $FORCE
