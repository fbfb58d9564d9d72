#!/usr/bin/env bash
# ResNet 96 x 8: the rollout criterion over calibration seeds 1000 and 1001, compared over seeds 0-49.
# Reproduces the figures of docs/results/mnist-w96d8-cpu-50seeds-rollout/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-resnet-zeros-w96d8-cpu
# calibration, one seed per core: 55:59 and 54:27 wall side by side, 3.5 GB each
calibrate_seeds cal "1000 1001" -c $CK $D --machine bbels --criterion rollout
patchdb merge calibrate --criterion rollout --out "$OUT/schedule-bbels-rollout.json" "$OUT/cal-1000.json" "$OUT/cal-1001.json" $FORCE
patchdb merge calibrate --criterion cosine --out "$OUT/sched-cos.json" "$OUT/cal-1000.json" "$OUT/cal-1001.json" $FORCE
# comparison with the committed schedule: 44:26 and 42:45 wall side by side, 3.4 GB each
# seeds 0..24 and 25..49, two 1-thread runs side by side
compare_halves merged $CK/schedule-bbels-rollout.json 0 25 25 -c $CK $D
python benchmarks/paired_compare.py docs/results/mnist-w96d8-cpu-50seeds-sizes1to21/compare.json \
    "$OUT/merged/compare.json" --names cosine,rollout --png "$OUT/merged/paired.png"
