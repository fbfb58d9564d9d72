#!/usr/bin/env bash
# The v-parametrised ResNet 96 x 8 with the epsilon network's 4-seed rollout schedule (seeds 0-99).
# Reproduces the figures of docs/results/mnist-w96d8-cpu-v-rollout4/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CKV=checkpoints/mnist-resnet-zeros-v-w96d8-cpu
# training (59:00 wall, 2 threads); the committed checkpoint is what the figures used. Retrain into $OUT:
#   OMP_WAIT_POLICY=PASSIVE patchdb train $D --arch resnet --padding zeros --predict v --width 96 --depth 8 --minutes 59 \
#       -b 32 --lr 1e-3 --lr-final 5e-5 --ema 0.999 --threads 2 --out "$OUT/ck"
S=checkpoints/mnist-resnet-zeros-w96d8-cpu/schedule-bbels-rollout4.json
# seeds 0-49: 46:05 / 47:03 wall side by side, 3.3 GB each
# seeds 0..24 and 25..49, two 1-thread runs side by side
compare_halves seeds0-49 $S 0 25 25 -c $CKV $D
# held out, seeds 50-99: 47:37 / 47:56 wall side by side
# seeds 50..74 and 75..99, two 1-thread runs side by side
compare_halves seeds50-99 $S 50 25 25 -c $CKV $D
patchdb merge compare --out "$OUT/seeds0-99" "$OUT/cmp-0" "$OUT/cmp-25" "$OUT/cmp-50" "$OUT/cmp-75" $FORCE
python benchmarks/paired_compare.py docs/results/mnist-w96d8-cpu-rollout4/seeds0-49/compare.json \
    "$OUT/seeds0-49/compare.json" --names eps,v --png "$OUT/seeds0-49/paired.png"
