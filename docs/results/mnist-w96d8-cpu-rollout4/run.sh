#!/usr/bin/env bash
# ResNet 96 x 8: rollout schedule over four calibration seeds, seeds 0-49 and held-out 50-99.
# Reproduces the figures of docs/results/mnist-w96d8-cpu-rollout4/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-resnet-zeros-w96d8-cpu
# calibration seeds 1002 and 1003 (1000, 1001: ../mnist-w96d8-cpu-50seeds-rollout/run.sh): ~50-65 min each, 1 thread
calibrate_seeds cal "1002 1003" -c $CK $D --machine bbels --criterion rollout
P=docs/results/mnist-w96d8-cpu-50seeds-rollout/calibration-parts
patchdb merge calibrate --criterion rollout --out "$OUT/schedule-bbels-rollout4.json" $P/cal-100[0-3].json $FORCE
patchdb merge calibrate --criterion cosine --out "$OUT/schedule-bbels-cosine4.json" $P/cal-100[0-3].json $FORCE
S=$CK/schedule-bbels-rollout4.json
# seeds 0-49, then the held-out seeds 50-99 (1:21:47 / 1:21:46 wall side by side on a slow day)
# seeds 0..24 and 25..49, two 1-thread runs side by side
compare_halves seeds0-49 $S 0 25 25 -c $CK $D
# seeds 50..74 and 75..99, two 1-thread runs side by side
compare_halves seeds50-99 $S 50 25 25 -c $CK $D
