#!/usr/bin/env bash
# The attribution pages (issue 30) and the screenshots in this folder.
# Run from anywhere; needs chromium, chromedriver and selenium (as .ci/run installs them) and
# ../shared/data/cifar10-jpeg.zip beside the repository. On 2 CPU cores shared with other jobs
# (load ~15) sampling took 15 + 27 min and attribution 13 + 20 min.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/results/attribution-page
WORK=${WORK:-$OUT/work}  # samples, attribution files and the pages themselves (not committed: 10+ MB)
mkdir -p "$WORK"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# MNIST: the embedded set (first 500 images), 16 samples, the paper's 20-step ResNet schedule;
# samples 0 and 1 attributed for the screenshots (all 16: drop --samples, ~16x the time).
patchdb sample --limit 500 --num 16 --save-trajectory --out "$WORK/mnist.h5" --force
patchdb attribute "$WORK/mnist.h5" --samples 0,1 --out "$WORK/mnist01.attrib.h5" --dtype float32 \
  --html "$WORK/mnist01.html" --force

# CIFAR-10: the first 1000 images of the JPEG zip, 4 samples, a small 8-step schedule.
# (--dataset is repeated for attribute: the zip's inner folder recorded in the sample file
# does not reload by itself.)
# The size and open time of a 16-sample page (README table): all samples (82 min here).
[ -n "${ALL16:-}" ] && patchdb attribute "$WORK/mnist.h5" --dtype float32 --html "$WORK/mnist16.html" --force

CIFAR=../shared/data/cifar10-jpeg.zip
patchdb sample --dataset "$CIFAR" --limit 1000 --schedule 3,3,3,5,5,5,7,7 --steps 8 --num 4 \
  --save-trajectory --out "$WORK/cifar.h5" --force
patchdb attribute "$WORK/cifar.h5" --dataset "$CIFAR" --dtype float32 --html "$WORK/cifar.html" --force

SHOT="python $OUT/screenshot.py"
$SHOT "$WORK/mnist01.html" "$OUT/mnist-sources.png" --sample 0 --step 5 --pixel 20,19
$SHOT "$WORK/mnist01.html" "$OUT/mnist-mosaic.png" --sample 0 --step 1 --pixel 20,19 --view mosaic
$SHOT "$WORK/mnist01.html" "$OUT/mnist-early-step.png" --sample 0 --step 14 --pixel 20,19 --view input
$SHOT "$WORK/cifar.html" "$OUT/cifar-sources.png" --sample 0 --step 3 --pixel 16,16
$SHOT "$WORK/cifar.html" "$OUT/cifar-highlight.png" --sample 0 --step 1 --pixel 16,16 --highlight
