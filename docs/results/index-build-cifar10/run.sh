#!/usr/bin/env bash
# CIFAR-10 JPEG: one index file per size of cifar10-resnet-zeros over all 50,000 images, and per-call speed.
# Reproduces the figures of docs/results/index-build-cifar10/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
export OMP_NUM_THREADS=1
# 6,760 s of one-thread build time in all; the three runs can go side by side on separate cores
python benchmarks/index.py build --dataset "$DATA/cifar10-jpeg.zip" --root . --scales 3,9 --keep "$OUT"
python benchmarks/index.py build --dataset "$DATA/cifar10-jpeg.zip" --root . --scales 5,7,11 --keep "$OUT"
python benchmarks/index.py build --dataset "$DATA/cifar10-jpeg.zip" --root . --scales 13,15,17 --keep "$OUT"
# per call, batch 1, tail correction 1024
python benchmarks/index.py speed "$OUT/cifar10-jpeg-all-k3.h5" --schedule constant:3 --batch 1 --tail 1024 | tee "$OUT/speed-k3.txt"
python benchmarks/index.py speed "$OUT/cifar10-jpeg-all-k9.h5" --schedule constant:9 --batch 1 --tail 1024 | tee "$OUT/speed-k9.txt"
