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
    for s in 0 1 2 3; do patchdb merge exact --force --out "$OUT/exact-seed$s-merged.h5" "$OUT/exact-seed$s.h5"; done
    EXACT_PARTS=("$OUT"/exact-seed[0-3]-merged.h5)
else
    EXACT_PARTS=("$HERE"/exact-seed[0-9].h5)  # the seeds stored so far
fi
patchdb merge exact --force --out "$OUT/exact4.h5" "${EXACT_PARTS[@]}"

# 3. Which setting, on seed 0 (each ~1.5-2.5 min; seed0-*.json).
v0() {  # NAME FLAGS...
    local name=$1; shift
    cp "$HERE/exact-seed0.h5" "$OUT/ex0-$name.h5"
    OMP_NUM_THREADS=1 PATCHDB_INDEX_MEMORY=4GiB patchdb validate "$INDEX" --seed 0 --seeds 1 -b 1 --min-r2 0 --scan-cap 0.5 \
        --sample-above 0.65 $FORCE "$@" --exact-samples "$OUT/ex0-$name.h5" --json-out "$OUT/seed0-$name.json"
}
v0 fm-setting --reuse 4 --sample-size 4096
v0 tc4096 --reuse 4 --sample-size 4096 --tail-correction 4096
v0 ss16k-tc4096 --reuse 4 --sample-size 16384 --tail-correction 4096
v0 r0-tc4096 --reuse 0 --sample-size 4096 --tail-correction 4096
v0 r0-tc4k-top256 --reuse 0 --sample-size 4096 --tail-correction 4096 --topk 256
v0 r0-tc8k-ss8k --reuse 0 --sample-size 8192 --tail-correction 8192
v0 r0-tc8k-ss4k --reuse 0 --sample-size 4096 --tail-correction 8192
v0 r4-tc8k-ss8k --reuse 4 --sample-size 8192 --tail-correction 8192
SETTING="--scan-cap 0.5 --reuse 0 --sample-above 0.65 --sample-size 8192 --tail-correction 8192"

# 4. The chosen setting over every stored seed (~4 min; validate-r0-tc8k-ss8k-seeds0-3.json).
OMP_NUM_THREADS=1 PATCHDB_INDEX_MEMORY=4GiB patchdb validate "$INDEX" --seed 0 --seeds ${#EXACT_PARTS[@]} \
    -b ${#EXACT_PARTS[@]} --min-r2 0 $SETTING $FORCE --exact-samples "$OUT/exact4.h5" --json-out "$OUT/validate-r0-tc8k-ss8k.json"

# 5. Throughput at batch 64, the same setting: one one-thread worker beside other jobs, 64 samples (~15-25 min;
#    scale-w1-b64-r0-tc8k-ss8k.json in the afternoon, scale-w1-b64-dec7b.json after the tail sample's fix),
#    then two one-thread workers, 128 samples (the issue's configuration; scale-w2-b64-dec7b.json).
OMP_NUM_THREADS=1 PATCHDB_INDEX_MEMORY=4GiB python benchmarks/scale.py measure --threads 1 --index "$INDEX" --num 64 \
    --workers 1 --batch 64 --extra "$SETTING" --out "$OUT/scale-w1-b64.json"
OMP_NUM_THREADS=1 PATCHDB_INDEX_MEMORY=4GiB python benchmarks/scale.py measure --threads 1 --index "$INDEX" --num 128 \
    --workers 2 --batch 64 --extra "$SETTING" --out "$OUT/scale-w2-b64.json"
