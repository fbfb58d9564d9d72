#!/usr/bin/env bash
# Calibrate + compare (and optionally train) on a lent GPU machine, in one call.
# Each stage is time-boxed; results are re-packed into $OUT/results.tar after every stage, so a
# stage cut off by its timeout loses only itself. Calls the click commands directly (not cli.main)
# so that other modules of the CLI are not needed there.
# DATA: a git-ignored folder inside the repo holding mnist-t10k/ and fashion-mnist/ (IDX .gz files),
# copied there and named in the device call's carry (the shared data folder does not travel).
#   DATA=.devdata  CK=checkpoints/mnist-resnet-zeros-w32d6-cpu  NUM_CAL=10  NUM_CMP=100  TRAIN_SEC=120
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
DATA=${DATA:-.devdata}; OUT=${OUT:-runs/gpu-eval}; DEV=${DEV:-cuda}; RES=${RES:-runs/gpu-eval-res}; mkdir -p $OUT $RES
NUM_CAL=${NUM_CAL:-10}; NUM_CMP=${NUM_CMP:-100}; TRAIN_SEC=${TRAIN_SEC:-120}; SIZES=${SIZES:-3,5,7,9,11,13,15,17,19,21}
BLOCK=${BLOCK:-512}; TC1=${TC1:-100}; TM1=${TM1:-130}; TC2=${TC2:-80}; TM2=${TM2:-110}; TC3=${TC3:-80}; TM3=${TM3:-110};
GCK=${GCK:-$RES/mnist-gpu-ck}; FCK=${FCK:-$RES/fashion-gpu-ck}; DET=${DET:-0}; DEADLINE=${DEADLINE:-540}; CAL_SEED=${CAL_SEED:-1000}; STAGES=${STAGES:-"cpu gpu fashion"}
LIMIT=${LIMIT:-}
cmd() { python3 -c "import sys; from cli.$1 import command; command(sys.argv[1:])" "${@:2}"; }
pack() { tar -C $RES -cf $OUT/results.tar . ; }
MNIST="--dataset mnist --root $DATA/mnist-t10k --split test ${LIMIT:+--limit $LIMIT}"
FASH="--dataset fashion-mnist --root $DATA/fashion-mnist --split train --limit ${FLIMIT:-10000}"
COMMON="--device $DEV --block-mb $BLOCK"

left() { local l=$((DEADLINE - SECONDS)); [ $l -lt $1 ] && echo $((l > 1 ? l : 1)) || echo $1; }
evaluate() {  # name checkpoint dataset-options timeout-calibrate timeout-compare (capped by DEADLINE)
  local name=$1 ck=$2 data=$3 tcal=$(left $4) tcmp; mkdir -p $RES/$name
  local t0=$SECONDS
  timeout $tcal bash -c "$(declare -f cmd); cmd calibrate -c $ck $data $COMMON --num $NUM_CAL --seed $CAL_SEED -b $NUM_CAL --sizes $SIZES --out $RES/$name/schedule.json" 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -4
  echo "[$name] calibrate took $((SECONDS - t0)) s"; pack
  local sched=$RES/$name/schedule.json; [ -f $sched ] || sched=${FALLBACK:-mnist-resnet-zeros}
  t0=$SECONDS; tcmp=$(left $5)
  timeout $tcmp bash -c "$(declare -f cmd); cmd compare -c $ck $data $COMMON --num $NUM_CMP -b 50 -s $sched --out $RES/$name/compare" 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -9
  echo "[$name] compare took $((SECONDS - t0)) s"; pack
}

nvidia-smi -L 2>/dev/null; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
for stage in $STAGES; do
  case $stage in
    cpu)  # the model trained on the 2-core CPU (acceptance run)
      evaluate mnist-cpu $CK "$MNIST" $TC1 $TM1
      [ "$DET" = 1 ] || continue
      t0=$SECONDS  # determinism: the same 16 seeds twice
      for rep in 1 2; do timeout 60 bash -c "$(declare -f cmd); cmd compare -c $CK $MNIST $COMMON --num 16 -b 16 -s $RES/mnist-cpu/schedule.json --out $RES/det$rep" >/dev/null 2>&1; done
      python3 -c "import json; a,b=(json.load(open('$RES/det%d/compare.json'%i)) for i in (1,2)); print('determinism: per-seed r identical =', a['per_seed_r']==b['per_seed_r'])" 2>&1 | tail -1
      echo "[det] took $((SECONDS - t0)) s"; pack ;;
    gpu)  # a bigger ResNet trained on the GPU for TRAIN_SEC seconds
      [ -f $GCK/model.pt ] || timeout $((TRAIN_SEC + 60)) bash -c "$(declare -f cmd); cmd train $MNIST --device $DEV --width 128 --depth 8 --minutes $(python3 -c "print($TRAIN_SEC/60)") -b 128 --lr 1e-3 --lr-final 5e-5 --ema 0.999 --out $GCK" 2>&1 | tr '\r' '\n' | tail -1
      rm -f $GCK/train_state.pt
      evaluate mnist-gpu $GCK "$MNIST" $TC2 $TM2 ;;
    fashion)
      [ -f $FCK/model.pt ] || timeout $((TRAIN_SEC + 60)) bash -c "$(declare -f cmd); cmd train $FASH --device $DEV --width 128 --depth 8 --minutes $(python3 -c "print($TRAIN_SEC/60)") -b 128 --lr 1e-3 --lr-final 5e-5 --ema 0.999 --out $FCK" 2>&1 | tr '\r' '\n' | tail -1
      rm -f $FCK/train_state.pt
      FALLBACK=fashion-mnist-resnet-zeros evaluate fashion-gpu $FCK "$FASH" $TC3 $TM3 ;;
  esac
done
pack; ls -R $RES | head -50
