#!/usr/bin/env bash
# The throughput table of README.md in this folder (issue 27). Run from the repository root.
# INDEX: an index file of the first 1,000 Fashion-MNIST training images, bbELS, the whole
# fashion-mnist-resnet-zeros schedule, built with:
#   OMP_NUM_THREADS=1 patchdb build --dataset fashion-mnist --root ../shared/data/fashion-mnist --limit 1000 \
#       --machine bbels --scales fashion-mnist-resnet-zeros --out "$INDEX"
set -euo pipefail
INDEX=${1:?usage: run.sh INDEX.h5 [more index files]}
shift
# Approximate engine with step-to-step reuse 4 and without (the default), exact engine on sizes 3, 9, 17
# (7 of the 20 steps), batch 1 and 8, one thread.
OMP_NUM_THREADS=1 python benchmarks/throughput.py "$INDEX" "$@" --batch 1 --batch 8 --scan-cap 0.5 --reuse 4 \
    --exact-sizes 3,9,17
OMP_NUM_THREADS=1 python benchmarks/throughput.py "$INDEX" "$@" --batch 4 --scan-cap 0.5 --reuse 4 --exact-sizes none
OMP_NUM_THREADS=1 python benchmarks/throughput.py "$INDEX" "$@" --batch 16 --scan-cap 0.5 --reuse 4 --exact-sizes 3,9,17
# The engine before issue 27 (git 17050b7), whole samples from the same seeds, for the same index:
#   git archive 17050b7 patchdb cli | tar -x -C OLD && PYTHONPATH=OLD python - ... (see README.md)
