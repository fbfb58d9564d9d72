#!/usr/bin/env bash
# The v network calibrated against itself: cosine criterion, candidates 1..21, one seed.
# Reproduces the figures of docs/results/mnist-w96d8-cpu-v-calibration/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CKV=checkpoints/mnist-resnet-zeros-v-w96d8-cpu
# 1:50:03 wall, 1 thread
OMP_NUM_THREADS=1 patchdb calibrate -c $CKV $D --machine bbels --sizes 1,3,5,7,9,11,13,15,17,19,21 \
    --num 1 --seed 1001 -b 1 --threads 1 -o "$OUT/cal-1001.json" $FORCE
patchdb merge calibrate --out "$OUT/schedule-bbels-seed1001.json" "$OUT/cal-1001.json" $FORCE
# per step, the cosine of the chosen size against the two epsilon schedules' sizes
python benchmarks/schedule_cosines.py "$OUT/schedule-bbels-seed1001.json" checkpoints/mnist-resnet-zeros-w96d8-cpu/schedule-bbels-rollout4.json \
    checkpoints/mnist-resnet-zeros-w96d8-cpu/schedule-bbels-sizes1to21.json | tee "$OUT/vs-epsilon-schedules.txt"
