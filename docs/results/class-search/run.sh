#!/usr/bin/env bash
# Class-conditional search: id range in one index against one index per class.
# Reproduces the figures of docs/results/class-search/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
export OMP_NUM_THREADS=1
python benchmarks/index.py class-search --limit 60000 --k 9 --classes 0,7 | tee "$OUT/n60000-k9.txt"   # 26:06 wall, 5.6 GB
python benchmarks/index.py class-search --limit 10000 --k 9 --classes 0,7 | tee "$OUT/n10000-k9.txt"   # 3:12, 1.5 GB
python benchmarks/index.py class-search --limit 10000 --k 5 --classes 0,7 | tee "$OUT/n10000-k5.txt"   # 3:31, 1.7 GB
