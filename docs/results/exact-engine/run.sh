#!/usr/bin/env bash
# Exact engine: 20-step samples against a conv2d baseline, one call, distinct-window scan.
# Reproduces the figures of docs/results/exact-engine/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
export OMP_NUM_THREADS=1
# full 20-step bbELS samples, batch 8, against benchmarks/conv_baseline.py (timed on 250 images, scaled)
python benchmarks/exact.py sample --root "$DATA/mnist-t10k" --sizes 2000 --clock cpu --baseline-n 250 | tee "$OUT/sample-2000.txt"
python benchmarks/exact.py sample --root "$DATA/mnist-t10k" --sizes 10000 --clock cpu --baseline-n 250 | tee "$OUT/sample-10000.txt"
# one denoiser call per N, k, batch
python benchmarks/exact.py calls --root "$DATA/mnist-t10k" --sizes 500,2000,10000 --ks 3,9,15 --batches 1,16 --repeat 1 --clock cpu | tee "$OUT/calls.txt"
# distinct-window scan against the plain scan (the table kept k = 3, 5)
python benchmarks/exact.py dedup --root "$DATA/mnist-t10k" --sizes 10000 --ks 3,5,7,9 --batches 8 --repeat 1 --clock cpu | tee "$OUT/dedup.txt"
