#!/usr/bin/env bash
# The figures of README.md in this folder: the approximate engine against exact samples on CIFAR-10, all 50,000
# training images, bbELS, the whole cifar10-resnet-zeros schedule (issue 27). Run from anywhere.
. "$(dirname "$0")/../common.sh"
ZIP=$DATA/cifar10-jpeg.zip
HERE=docs/results/cifar50k-validate

# 1. The index, leaving out the sizes of the steps at t >= 0.65 (sizes 11-17: only sample-only steps use them).
#    One thread beside an exact sample on the other core (step 2): 48:21 wall, 2,824 CPU s, 6.7 GiB peak RSS, 8.9 GB file.
INDEX=indexes/cifar10-bbels.h5
[ -f "$INDEX" ] || OMP_NUM_THREADS=1 patchdb -v build --dataset "$ZIP" --machine bbels --scales cifar10-resnet-zeros \
    --sample-above 0.65 --threads 1 --memory 8GiB --out "$INDEX"

# 2. Exact samples, one seed per one-thread process (~50-60 min each; two side by side), stored in this folder
#    (the files here are these commands' output). Skipped when REUSE_EXACT=1 (the default): the stored ones are used.
if [ "${REUSE_EXACT:-1}" = 0 ]; then
    for s in 0 1 2 3; do
        OMP_NUM_THREADS=1 patchdb sample --dataset "$ZIP" --machine bbels -s cifar10-resnet-zeros --seed $s -n 1 -b 1 \
            --save-trajectory --out "$OUT/exact-seed$s.h5" $FORCE &
        [ $((s % 2)) = 1 ] && wait
    done
    EXACT_PARTS=("$OUT"/exact-seed[0-3].h5)
else
    EXACT_PARTS=("$HERE"/exact-seed[0-3].h5)
fi
patchdb merge exact --force --out "$OUT/exact4.h5" "${EXACT_PARTS[@]}"

# 3. The approximate engine from the same noise, the Fashion-MNIST setting (~3 min).
OMP_NUM_THREADS=1 PATCHDB_INDEX_MEMORY=4GiB patchdb validate "$INDEX" -s cifar10-resnet-zeros --seed 0 --seeds 4 -b 4 \
    --min-r2 0 --scan-cap 0.5 --reuse 4 --sample-above 0.65 --sample-size 4096 $FORCE \
    --exact-samples "$OUT/exact4.h5" --json-out "$OUT/validate-r4-sa065-ss4096.json"

# 4. Throughput at batch 64, the same setting (one one-thread worker, 64 samples; ~15 min).
OMP_NUM_THREADS=1 PATCHDB_INDEX_MEMORY=4GiB python benchmarks/scale.py measure --threads 1 --index "$INDEX" --num 64 \
    --workers 1 --batch 64 --extra "--scan-cap 0.5 --reuse 4 --sample-above 0.65 --sample-size 4096" \
    --out "$OUT/scale-w1-b64-sa065-ss4096.json"
