#!/usr/bin/env bash
# Fashion-MNIST, all 60,000 training images: ResNet 64 x 8 trained by patchdb, calibrated and compared through
# the index (approximate engine with the validated settings), seeds 0-49; per-step protocol on seeds 0-3.
# Reproduces docs/results/fashion-mnist60k-w64d8-cpu-50seeds/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
export OMP_NUM_THREADS=1 PATCHDB_INDEX_MEMORY=${PATCHDB_INDEX_MEMORY:-4GiB}
D="--dataset fashion-mnist --root $DATA/fashion-mnist --split train"
CK=checkpoints/fashion-mnist60k-resnet-zeros-w64d8-cpu
IX=indexes/fmnist-bbels.h5
# the index (all 60,000 images, sizes 3..17): 49 min wall on both cores, docs/results/index-build-fashion
[ -f $IX ] || patchdb build $D --machine bbels --scales fashion-mnist-resnet-zeros --memory 8GiB --out $IX
# the approximate engine's settings validated against exact samples at N = 60,000 (docs/results/throughput)
R="--index $IX --scan-cap 0.5 --reuse 4 --sample-above 0.9"
# training: 80:06, 6,219 steps, 1 thread (the CIFAR-10 training ran on the other core). Retrain into $OUT:
#   patchdb train $D --arch resnet --padding zeros --width 64 --depth 8 --minutes 80 -b 32 --lr 1e-3 \
#       --lr-final 5e-5 --ema 0.999 --threads 1 --save-every 300 --out "$OUT/ck"
# through the index (../common.sh), the two datasets side by side, one process per core: calibration (candidates = the
# index's sizes, 3..17; the network's receptive field is 21) 5:42, 9.5 GB; comparison, 50 seeds, 20:09, 10.5 GB; per-step
# protocol, seeds 0-3, 4:17, 9.9 GB
through_index $CK $D $R
# exact check of seed 0 for this schedule (exact engine over all 60,000 images): 44:38, 11.8 GB
patchdb validate $IX -s $CK/schedule-bbels.json --seed 0 --seeds 1 -b 1 --min-r2 0 --scan-cap 0.5 --reuse 4 \
    --sample-above 0.9 --json-out "$OUT/exact-check-seed0.json" --exact-samples "$OUT/exact-seed0.h5" $FORCE
