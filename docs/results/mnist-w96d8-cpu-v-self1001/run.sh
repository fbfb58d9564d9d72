#!/usr/bin/env bash
# The v network with its own calibrated schedule, seeds 0-49.
# Reproduces the figures of docs/results/mnist-w96d8-cpu-v-self1001/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CKV=checkpoints/mnist-resnet-zeros-v-w96d8-cpu
S=$CKV/schedule-bbels-seed1001.json
# 2:35:53 / 2:34:14 wall side by side (a day when this CPU ran ~3x slower than usual)
# seeds 0..24 and 25..49, two 1-thread runs side by side
compare_halves seeds0-49 $S 0 25 25 -c $CKV $D
python benchmarks/paired_compare.py docs/results/mnist-w96d8-cpu-v-rollout4/seeds0-49/compare.json \
    "$OUT/seeds0-49/compare.json" --names transferred,self1001 --png "$OUT/seeds0-49/paired.png" \
    | tee "$OUT/seeds0-49/paired-vs-transferred.txt"
