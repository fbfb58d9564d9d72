#!/usr/bin/env bash
# The README's five-minute tour, as written there, with the wall time of each command.
# Run from anywhere: it works in the repository root (the tour writes into tour/ there). Data:
# ../shared/data (the project's copy); on your machine set ROOT_OPT=--download to let torchvision fetch it.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ROOT_OPT=${ROOT_OPT:---root ../shared/data/fashion-mnist}
mkdir -p tour
# a fresh run: the tour's outputs are refused if they exist (no --force in the tour)
rm -rf tour/fm2k.h5 tour/samples.h5 tour/samples.png tour/samples.attrib.h5 tour/query.png tour/plots
time patchdb build --dataset fashion-mnist $ROOT_OPT --limit 2000 --scales 3,5 --out tour/fm2k.h5
time patchdb info tour/fm2k.h5
time patchdb sample --index tour/fm2k.h5 --schedule 3,3,3,3,3,5,5,5,5,5 --num 2 --save-trajectory --out tour/samples.h5
time patchdb attribute tour/samples.h5 --plots tour/plots
time patchdb query tour/samples.h5 --sample-id 0 --size 5 --pixel 16,16 --top 5 --png tour/query.png
