#!/usr/bin/env bash
# ResNet 96 x 8 recalibrated with candidates up to its receptive field (1..21), seeds 0-49.
# Reproduces the figures of docs/results/mnist-w96d8-cpu-50seeds-sizes1to21/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-resnet-zeros-w96d8-cpu
# 48:03 and 46:44 wall side by side (1 thread each), 3.5 GB each
calibrate_seeds cal96 "1000 1001" -c $CK $D --machine bbels --sizes 3,5,7,9,11,13,15,17,19,21
# is a 1x1 patch ever better at low noise? (1:29 each)
for s in 1000 1001; do
    OMP_NUM_THREADS=1 patchdb calibrate -c $CK $D --machine bbels --sizes 1,3 --num 1 --seed $s -b 1 --threads 1 -o "$OUT/cal96k1-$s.json" $FORCE
done
patchdb merge calibrate --out "$OUT/sched-3to21.json" "$OUT/cal96-1000.json" "$OUT/cal96-1001.json" $FORCE
patchdb merge calibrate --out "$OUT/k1.json" "$OUT/cal96k1-1000.json" "$OUT/cal96k1-1001.json" $FORCE
patchdb merge calibrate --out "$OUT/schedule-bbels-sizes1to21.json" "$OUT/sched-3to21.json" "$OUT/k1.json" $FORCE
S=$CK/schedule-bbels-sizes1to21.json
# 50 seeds as four 1-thread runs, two side by side (26-29 min each)
# seeds 0..12 and 13..24, two 1-thread runs side by side
compare_halves part-a $S 0 13 12 -c $CK $D
# seeds 25..37 and 38..49, two 1-thread runs side by side
compare_halves part-b $S 25 13 12 -c $CK $D
patchdb merge compare --out "$OUT/merged" "$OUT/cmp-0" "$OUT/cmp-13" "$OUT/cmp-25" "$OUT/cmp-38" $FORCE
