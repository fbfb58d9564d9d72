# Shared by the docs/results/*/run.sh scripts, which start with
#     . "$(dirname "$0")/../common.sh"
# Each script reproduces the figures of the README.md in its folder. Run it from anywhere: it works in the
# repository root and its paths are relative to it. Data: ../shared/data (the project's copy); on your machine
# pass --download (torchvision fetches MNIST / Fashion-MNIST) or point DATA at your own copy. Outputs go to
# $OUT (default runs/<the script's folder name>). Wall times in the scripts' comments are the project's
# 2-core CPU.
#
# Outputs that exist are replaced: the commands get $FORCE (default --force), so a script can be rerun into the
# same $OUT. FORCE= makes them refuse an existing output instead.
set -euo pipefail
RESULT=$(basename "$(cd "$(dirname "$0")" && pwd)")
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/$RESULT}
FORCE=${FORCE---force}
mkdir -p "$OUT"

# compare_halves NAME SCHEDULE SEED NUM_A NUM_B COMPARE_OPTIONS...
# Seeds SEED .. SEED+NUM_A-1 and the NUM_B seeds after them as two 1-thread `patchdb compare` runs side by side
# (one per core) into $OUT/cmp-<first seed of each>, merged into $OUT/NAME with the first half's grid.png.
compare_halves() {
    local name=$1 sched=$2 a=$3 na=$4 nb=$5 pid
    shift 5
    local b=$((a + na))
    OMP_NUM_THREADS=1 patchdb compare "$@" --num "$na" --seed "$a" -b "$na" --threads 1 -s "$sched" \
        --out "$OUT/cmp-$a" $FORCE & pid=$!
    OMP_NUM_THREADS=1 patchdb compare "$@" --num "$nb" --seed "$b" -b "$nb" --threads 1 -s "$sched" \
        --out "$OUT/cmp-$b" $FORCE
    wait "$pid"
    patchdb merge compare --out "$OUT/$name" "$OUT/cmp-$a" "$OUT/cmp-$b" $FORCE
    cp "$OUT/cmp-$a/grid.png" "$OUT/$name/"
}

# calibrate_seeds PREFIX "SEED..." CALIBRATE_OPTIONS...
# One 1-thread `patchdb calibrate` per seed (one image each), all side by side, into $OUT/PREFIX-<seed>.json.
calibrate_seeds() {
    local prefix=$1 seeds=$2 s p pids=()
    shift 2
    for s in $seeds; do
        OMP_NUM_THREADS=1 patchdb calibrate "$@" --num 1 --seed "$s" -b 1 --threads 1 -o "$OUT/$prefix-$s.json" \
            $FORCE & pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
}

# through_index CHECKPOINT DATA_AND_INDEX_OPTIONS...
# A network against the bbELS machine over a whole training set through its index: calibrate (candidates 3..17, the
# sizes the resnet-zeros indexes hold; seeds 1000-1001) into $OUT/schedule-bbels.json, compare over seeds 0-49 with the
# checkpoint's committed schedule into $OUT/compare, and the per-step protocol on seeds 0-3 into $OUT/perstep.
through_index() {
    local ck=$1
    shift
    patchdb calibrate -c "$ck" "$@" --machine bbels --sizes 3,5,7,9,11,13,15,17 --num 2 --seed 1000 -b 2 --threads 1 \
        -o "$OUT/schedule-bbels.json" $FORCE
    patchdb compare -c "$ck" "$@" --num 50 --seed 0 -b 25 --threads 1 -s "$ck/schedule-bbels.json" --out "$OUT/compare" $FORCE
    patchdb compare --protocol per-step -c "$ck" "$@" --num 4 --seed 0 -b 4 --threads 1 -s "$ck/schedule-bbels.json" \
        --out "$OUT/perstep" $FORCE
}
