#!/usr/bin/env bash
# Approximate against exact engine: time per call and per sample at N = 10,000 and 60,000.
# Reproduces the figures of docs/results/approx-speed/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
export OMP_NUM_THREADS=1
# the index files of docs/results/index-build-fashion/run.sh
IDX=${IDX:-runs/index-build-fashion}
# N = 10,000, batch 1 and 16 (25:55 wall)
python benchmarks/index.py speed "$IDX/fm10k.h5" --batch 1 --batch 16 --tail 1024 --scan-cap 0.5 | tee "$OUT/speed-10k.txt"
# N = 60,000, batch 1: two halves of the schedule, side by side on two cores (6:18 / 6:48 wall)
python benchmarks/index.py speed "$IDX/fm60k-full.h5" --batch 1 --tail 1024 --scan-cap 0.5 --sizes 3,7,9,15 > "$OUT/speed-60k-a.txt" & pid=$!
python benchmarks/index.py speed "$IDX/fm60k-full.h5" --batch 1 --tail 1024 --scan-cap 0.5 --sizes 5,11,13,17 > "$OUT/speed-60k-b.txt"
wait $pid
# where a sample's time goes (2:30 wall)
python benchmarks/index.py breakdown "$IDX/fm60k-full.h5" --scan-cap 0.5 | tee "$OUT/breakdown-60k.txt"
# the re-rank factor as the lever: approximate engine only, factor 8 for every size
python benchmarks/index.py speed "$IDX/fm60k-full.h5" --batch 1 --tail 1024 --scan-cap 0.5 --skip-exact --k-factor 8 | tee "$OUT/speed-60k-kf8.txt"
# the scan cap per call
python benchmarks/index.py scan-cap "$IDX/fm60k-full.h5" --sizes 3,5,7,9,11 --caps 0,1,0.5,0.25 | tee "$OUT/scan-cap-60k.txt"
