#!/usr/bin/env bash
# Index choice and tuning: the re-rank factor grid and the edge families' PCA width.
# Reproduces the figures of docs/results/index-tuning/README.md. Run from anywhere: paths are relative to
# the repository root. Data: ../shared/data (the project's copy); on your machine pass --download
# (torchvision fetches MNIST / Fashion-MNIST) or point DATA at your own copy.
# Outputs go to $OUT (default runs/index-tuning); wall times in the comments are the project's 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/index-tuning}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
# recall and time per (nprobe, re-rank factor) on the k = 9 interior of 10,000 images (2:50 wall)
python benchmarks/index.py tune --limit 10000 --k 9 | tee "$OUT/tune-k9.txt"
# edge families: 32 against 64 PCA dims, 2,000 images
python benchmarks/edge_recall.py --root "$DATA" --n 2000 --sizes 9,13 --dims 32,64 | tee "$OUT/edge-recall.txt"
# the recall curves stored in any built file (e.g. one of index-build-fashion/run.sh)
if [ -f runs/index-build-fashion/fm10k.h5 ]; then python benchmarks/index.py recall runs/index-build-fashion/fm10k.h5 | tee "$OUT/recall-fm10k.txt"; fi
