#!/usr/bin/env bash
# Index builds over Fashion-MNIST: N = 2,000, 10,000 and 60,000, whole fashion-mnist-resnet-zeros schedule.
# Reproduces the figures of docs/results/index-build-fashion/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
FM="--dataset fashion-mnist --root $DATA/fashion-mnist"
# N = 2,000 (205 s) and N = 10,000 (18:01 with the current builder, 1 thread)
OMP_NUM_THREADS=1 /usr/bin/time -v patchdb -v build $FM --limit 2000 --scales fashion-mnist-resnet-zeros --out "$OUT/fm2k.h5" $FORCE
OMP_NUM_THREADS=1 /usr/bin/time -v patchdb -v build $FM --limit 10000 --scales fashion-mnist-resnet-zeros --out "$OUT/fm10k.h5" $FORCE
patchdb info "$OUT/fm10k.h5"
# N = 60,000: 33:24 wall with 2 threads, peak RSS 6.2 GB, 19.9 GB file
OMP_NUM_THREADS=2 /usr/bin/time -v patchdb -v build $FM --machine bbels --scales fashion-mnist-resnet-zeros \
    --memory 8GiB --out "$OUT/fm60k-full.h5" $FORCE
patchdb info "$OUT/fm60k-full.h5"
