#!/usr/bin/env bash
# Approximate against exact samples at N = 2,000, with and without tail correction.
# Reproduces the figures of docs/results/fm2k-validate/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
export OMP_NUM_THREADS=1
IDX=${IDX:-runs/index-build-fashion}
[ -f "$IDX/fm2k.h5" ] || patchdb build --dataset fashion-mnist --root "$DATA/fashion-mnist" --limit 2000 \
    --scales fashion-mnist-resnet-zeros --out "$IDX/fm2k.h5" $FORCE
V="patchdb validate $IDX/fm2k.h5 -s fashion-mnist-resnet-zeros --seeds 4 --batch-size 4 --min-r2 0"
$V --tail-correction 0    --json-out "$OUT/uncond-tail0.json" $FORCE
$V --tail-correction 1024 --json-out "$OUT/uncond-tail1024.json" $FORCE
$V --tail-correction 1024 --label all --json-out "$OUT/cond-tail1024.json" $FORCE
