#!/usr/bin/env bash
# Index choice and tuning: the re-rank factor grid and the edge families' PCA width.
# Reproduces the figures of docs/results/index-tuning/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
export OMP_NUM_THREADS=1
# recall and time per (nprobe, re-rank factor) on the k = 9 interior of 10,000 images (2:50 wall)
python benchmarks/index.py tune --limit 10000 --k 9 | tee "$OUT/tune-k9.txt"
# edge families: 32 against 64 PCA dims, 2,000 images
python benchmarks/edge_recall.py --root "$DATA" --n 2000 --sizes 9,13 --dims 32,64 | tee "$OUT/edge-recall.txt"
# the recall curves stored in any built file (e.g. one of index-build-fashion/run.sh)
if [ -f runs/index-build-fashion/fm10k.h5 ]; then python benchmarks/index.py recall runs/index-build-fashion/fm10k.h5 | tee "$OUT/recall-fm10k.txt"; fi
