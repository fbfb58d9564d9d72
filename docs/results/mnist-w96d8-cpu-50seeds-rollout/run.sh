#!/usr/bin/env bash
# ResNet 96 x 8: the rollout criterion over calibration seeds 1000 and 1001, compared over seeds 0-49.
# Reproduces the figures of docs/results/mnist-w96d8-cpu-50seeds-rollout/README.md. Run from anywhere: paths are relative to
# the repository root. Data: ../shared/data (the project's copy); on your machine pass --download
# (torchvision fetches MNIST / Fashion-MNIST) or point DATA at your own copy.
# Outputs go to $OUT (default runs/mnist-w96d8-cpu-50seeds-rollout); wall times in the comments are the project's 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/mnist-w96d8-cpu-50seeds-rollout}
mkdir -p "$OUT"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-resnet-zeros-w96d8-cpu
# calibration, one seed per core: 55:59 and 54:27 wall side by side, 3.5 GB each
pids=()
for s in 1000 1001; do
    OMP_NUM_THREADS=1 patchdb calibrate -c $CK $D --machine bbels --num 1 --seed $s -b 1 --threads 1 \
        --criterion rollout -o "$OUT/cal-$s.json" & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
patchdb merge calibrate --criterion rollout --out "$OUT/schedule-bbels-rollout.json" "$OUT/cal-1000.json" "$OUT/cal-1001.json"
patchdb merge calibrate --criterion cosine --out "$OUT/sched-cos.json" "$OUT/cal-1000.json" "$OUT/cal-1001.json"
# comparison with the committed schedule: 44:26 and 42:45 wall side by side, 3.4 GB each
# seeds 0..24 and 25..49, two 1-thread runs side by side
OMP_NUM_THREADS=1 patchdb compare -c $CK $D --num 25 --seed 0 -b 25 --threads 1 -s $CK/schedule-bbels-rollout.json --out "$OUT/cmp-0" & pid=$!
OMP_NUM_THREADS=1 patchdb compare -c $CK $D --num 25 --seed 25 -b 25 --threads 1 -s $CK/schedule-bbels-rollout.json --out "$OUT/cmp-25"
wait $pid
patchdb merge compare --out "$OUT/merged" "$OUT/cmp-0" "$OUT/cmp-25"
cp "$OUT/cmp-0/grid.png" "$OUT/merged/"
python benchmarks/paired_compare.py docs/results/mnist-w96d8-cpu-50seeds-sizes1to21/compare.json \
    "$OUT/merged/compare.json" --names cosine,rollout --png "$OUT/merged/paired.png"
