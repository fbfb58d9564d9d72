#!/usr/bin/env bash
# Where the machine parts from the network: hybrid samplers, and D at t = 1.
# Reproduces the figures of docs/results/mnist-w96d8-cpu-divergence/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
D="--dataset mnist --root $DATA/mnist-t10k --split test"
CK=checkpoints/mnist-resnet-zeros-w96d8-cpu
# ~30 min per mode, 1 thread
python benchmarks/divergence.py run -c $CK $D -s $CK/schedule-bbels-rollout4.json --seed 0 --num 8 --threads 1 --out "$OUT/prof-0.json"
python benchmarks/divergence.py report "$OUT/prof-0.json" --png "$OUT/profile.png" | tee "$OUT/profile.txt"
# D at t = 1, 0.95, 0.9 of four networks on the noises of seeds 0-15 (seconds)
python benchmarks/divergence.py denoised -c $CK -c checkpoints/mnist-resnet-zeros-v-w96d8-cpu \
    -c checkpoints/mnist-resnet-zeros-w64d8-cpu -c checkpoints/mnist-resnet-zeros-w128d8-gpu $D | tee "$OUT/denoised-v.txt"
