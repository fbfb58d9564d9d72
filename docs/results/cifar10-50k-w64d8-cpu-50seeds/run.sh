#!/usr/bin/env bash
# CIFAR-10 JPEG, all 50,000 training images: ResNet 64 x 8 trained by patchdb, calibrated and compared through
# the index (approximate engine with the validated settings), seeds 0-49; per-step protocol on seeds 0-3.
# Reproduces docs/results/cifar10-50k-w64d8-cpu-50seeds/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
export OMP_NUM_THREADS=1 PATCHDB_INDEX_MEMORY=${PATCHDB_INDEX_MEMORY:-2GiB}
D="--dataset $DATA/cifar10-jpeg.zip --split train"
CK=checkpoints/cifar10-50k-resnet-zeros-w64d8-cpu
IX=indexes/cifar10-bbels.h5
# the index (all 50,000 images, sizes 3..17): 1:28 wall, see docs/results/scale/run.sh
[ -f $IX ] || patchdb build $D --machine bbels --scales cifar10-resnet-zeros --memory 8GiB --out $IX
# the approximate engine's settings validated on Fashion-MNIST at N = 60,000 (docs/results/throughput); not yet against exact CIFAR-10 samples
R="--index $IX --scan-cap 0.5 --reuse 4 --sample-above 0.9"
# training: 80:13, 6,190 steps, 1 thread (the Fashion-MNIST training ran on the other core). Retrain into $OUT:
#   patchdb train $D --arch resnet --padding zeros --width 64 --depth 8 --minutes 80 -b 32 --lr 1e-3 \
#       --lr-final 5e-5 --ema 0.999 --threads 1 --save-every 300 --out "$OUT/ck"
# through the index (../common.sh), the two datasets side by side, one process per core: calibration (candidates = the
# index's sizes, 3..17; the network's receptive field is 21) 6:59, 10.2 GB; comparison, 50 seeds, 11:46, 11.0 GB; per-step
# protocol, seeds 0-3, 3:34, 10.9 GB
through_index $CK $D $R
