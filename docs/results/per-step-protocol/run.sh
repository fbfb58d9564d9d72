#!/usr/bin/env bash
# Per-step protocol (issue 31 item 4): r^2 and MSE of D, network vs machine, at the same x_t of the network's own
# DDIM trajectory, per noise level; MNIST, Fashion-MNIST and CIFAR-10 checkpoints, bbELS (its calibrated schedule)
# and IS, exact engine over the training subset each checkpoint was trained on.
# Reproduces docs/results/per-step-protocol/README.md. Run from anywhere: paths are relative to the repository root.
# Data: ../shared/data (the project's copy); point DATA at your own copy.
# Outputs go to $OUT (default runs/per-step-protocol); wall times in the comments are the project's 2-core CPU on
# 2026-12-06, shared with six other jobs (each run got ~10-15% of a core).
. "$(dirname "$0")/../common.sh"
export OMP_NUM_THREADS=1
CKM=checkpoints/mnist-resnet-zeros-w96d8-cpu
CKF=checkpoints/fashion-mnist2000-resnet-zeros-w64d8-cpu
CKC=checkpoints/cifar10-1000-resnet-zeros-w64d8-cpu
# MNIST (all 10,000 test images, the checkpoint's training set), seed 0, machines at 7 of the 20 steps: the exact
# engine over 10,000 images got ~7% of a core here and all 20 steps would have taken ~2.5 h of wall time
# 35:57 wall (7% of a core)
patchdb compare --protocol per-step -c $CKM --dataset mnist --root $DATA/mnist-t10k --split test \
    -s $CKM/schedule-bbels.json --num 1 --seed 0 -b 1 --threads 1 --at-steps 20,16,12,8,4,2,1 --out "$OUT/mnist" $FORCE
# CIFAR-10 (first 1,000 training images), seeds 0-1
# 37:54 wall
patchdb compare --protocol per-step -c $CKC --dataset $DATA/cifar10-jpeg.zip --split train --limit 1000 \
    -s $CKC/schedule-bbels.json --num 2 --seed 0 -b 2 --threads 1 --out "$OUT/cifar10" $FORCE
# Fashion-MNIST (first 2,000 training images), seeds 0-3, through the library API (the same per_step call)
# 1:05:41 wall (9% of a core)
python benchmarks/per_step_protocol.py $CKF $CKF/schedule-bbels.json "$OUT/fashion-mnist" --seeds 0-3 \
    --dataset fashion-mnist --root $DATA/fashion-mnist --split train --limit 2000
# the same through the CLI, seed 0 (agrees with seed 0 above to 3e-6 in r): 21:08 wall
patchdb compare --protocol per-step -c $CKF --dataset fashion-mnist --root $DATA/fashion-mnist --split train \
    --limit 2000 -s $CKF/schedule-bbels.json --num 1 --seed 0 -b 1 --threads 1 --out "$OUT/fashion-mnist-cli-seed0" $FORCE
