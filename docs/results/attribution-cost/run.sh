#!/usr/bin/env bash
# Attribution: copy check (IS against bbELS), time and storage, approximate attribution at N = 10,000 and 60,000.
# Reproduces the figures of docs/results/attribution-cost/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
export OMP_NUM_THREADS=1
REPO=$(pwd)
DATA=$(cd "$DATA" && pwd)
cd "$OUT"
# copy check: embedded MNIST (2,000 images) and Fashion-MNIST (first 5,000)
patchdb sample --machine is --num 4 --save-trajectory --out is2000.h5 $FORCE
patchdb sample --machine bbels --schedule mnist-resnet-zeros --num 4 --save-trajectory --out bbels2000.h5 $FORCE
F="--dataset fashion-mnist --root $DATA/fashion-mnist --limit 5000"
patchdb sample $F --machine bbels --schedule fashion-mnist-resnet-zeros --num 2 --save-trajectory --out fbbels5k.h5 $FORCE
patchdb sample $F --machine is --num 2 --save-trajectory --out fis5k.h5 $FORCE
patchdb attribute is2000.h5 --json --plots plots_is2000 $FORCE > is2000.json
patchdb attribute bbels2000.h5 --dtype float32 --json --plots plots_bbels2000 $FORCE > bbels2000.json
patchdb attribute fis5k.h5 --dtype float32 --json --plots plots_fis5k $FORCE > fis5k.json
patchdb attribute fbbels5k.h5 --samples 0 --dtype float32 --json --plots plots_fbbels5k $FORCE > fbbels5k.json
cd "$REPO"
# approximate attribution, constant:3 schedule, N = 10,000 and 60,000 (builds the two index files first)
python benchmarks/attribute.py --dataset fashion-mnist --root "$DATA" --n 10000 --n 60000 \
    --schedule constant:3 --index-dir "$OUT/idx" | tee "$OUT/approx-constant3.txt"
# the whole fashion-mnist-resnet-zeros schedule at N = 60,000 (index of index-build-fashion/run.sh)
IDX=${IDX:-runs/index-build-fashion}
/usr/bin/time -v python benchmarks/attribute.py --index "$IDX/fm60k-full.h5" --schedule fashion-mnist-resnet-zeros \
    | tee "$OUT/approx-full-schedule.txt"
