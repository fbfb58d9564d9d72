#!/usr/bin/env bash
# Approximate against exact samples at N = 60,000 (20 conditional and 20 unconditional seeds).
# Reproduces the figures of docs/results/fm60k-validate/README.md (paths, DATA, OUT, wall times: ../common.sh).
. "$(dirname "$0")/../common.sh"
export OMP_NUM_THREADS=1 PATCHDB_INDEX_MEMORY=3GiB
IDX=${IDX:-runs/index-build-fashion}
V="patchdb validate $IDX/fm60k-full.h5 -s fashion-mnist-resnet-zeros --min-r2 0 --scan-cap 0.5"
# conditional, classes = seed mod 10: two 10-seed runs side by side (40:02 wall each, 11.6 GB each)
$V --seed 0  --seeds 10 -b 10 --label all --exact-samples "$OUT/exact-cond-seeds0-9.h5"   --json-out "$OUT/v2-cond-cap05-seeds0-9.json" $FORCE & pid=$!
$V --seed 10 --seeds 10 -b 10 --label all --exact-samples "$OUT/exact-cond-seeds10-19.h5" --json-out "$OUT/v2-cond-cap05-seeds10-19.json" $FORCE
wait $pid
# unconditional: ~20 CPU-minutes of exact sampling per seed; one run after another here (the runs quoted
# went two side by side, one per core)
for range in 0:2 2:2 4:2 6:2 8:1 9:2 11:2 13:4 17:3; do
    s=${range%:*}; n=${range#*:}; last=$((s + n - 1))
    tag=$([ "$n" = 1 ] && echo "seed$s" || echo "seeds$s-$last")
    $V --seed "$s" --seeds "$n" -b "$n" --exact-samples "$OUT/exact-uncond-$tag.h5" --json-out "$OUT/v2-uncond-cap05-$tag.json" $FORCE
done
# the 20-seed medians (0.99712 conditional, 0.99410 unconditional)
patchdb merge validate --out "$OUT/merged-v2-cond-cap05.json" "$OUT"/v2-cond-cap05-*.json $FORCE
patchdb merge validate --out "$OUT/merged-v2-uncond-cap05.json" "$OUT"/v2-uncond-cap05-*.json $FORCE
# the committed runs (older than patchdb merge validate) give the same figures from their r2 rows:
python -c "import glob, json, statistics; r = [x for f in sorted(glob.glob('docs/results/fm60k-validate/v2-uncond-cap05-*.json')) for x in json.load(open(f))['r2']]; print(len(r), statistics.median(r), min(r))"
