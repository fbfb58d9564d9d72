#!/usr/bin/env bash
# ResNet 64 x 8 trained on the CPU, seeds 0-49.
# Reproduces the figures of docs/results/mnist-w64d8-cpu-50seeds/README.md. Run from anywhere: paths are relative to
# the repository root. Data: ../shared/data (the project's copy); on your machine pass --download
# (torchvision fetches MNIST / Fashion-MNIST) or point DATA at your own copy.
# Outputs go to $OUT (default runs/mnist-w64d8-cpu-50seeds); wall times in the comments are the project's 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/mnist-w64d8-cpu-50seeds}
mkdir -p "$OUT"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-resnet-zeros-w64d8-cpu
# training: 55 min, 2 threads (the committed checkpoint is what the figures used). Retrain into $OUT:
#   OMP_WAIT_POLICY=PASSIVE patchdb train $D --arch resnet --padding zeros --width 64 --depth 8 --minutes 55 \
#       -b 32 --lr 1e-3 --lr-final 5e-5 --ema 0.999 --threads 2 --out "$OUT/ck"
# calibration: 34 min, 1 thread, all 10,000 images, 6.9 GB
patchdb calibrate -c $CK $D --machine bbels --sizes 3,5,7,9,11,13 --num 2 --seed 1000 -b 2 --threads 1 -o "$OUT/schedule-bbels.json"
# seeds 0-29 and 30-49, two 1-thread runs side by side (49:24 and 34:27 wall)
# seeds 0..29 and 30..49, two 1-thread runs side by side
OMP_NUM_THREADS=1 patchdb compare -c $CK $D --num 30 --seed 0 -b 30 --threads 1 -s $CK/schedule-bbels.json --out "$OUT/cmp-0" & pid=$!
OMP_NUM_THREADS=1 patchdb compare -c $CK $D --num 20 --seed 30 -b 20 --threads 1 -s $CK/schedule-bbels.json --out "$OUT/cmp-30"
wait $pid
patchdb merge compare --out "$OUT/merged" "$OUT/cmp-0" "$OUT/cmp-30"
cp "$OUT/cmp-0/grid.png" "$OUT/merged/"
