#!/usr/bin/env bash
# Every speed / memory number of README's "Measured results", written to docs/results/ (one file per command,
# the command on its first line). Needs a quiet machine (nothing else running) and, for the detector
# benchmark, a trained SACT demo detector (REPLAY, default: the seed-1 run of scripts/demo_seeds.sh).
#
#   bash scripts/benchmarks.sh                  # about an hour on 2 cores
#   bash scripts/benchmarks.sh unit_1thread crossover_2threads   # only these result files
#   OUT=/tmp/results REPLAY=output/demo/sact_R_50_C4/model_final.pth bash scripts/benchmarks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-docs/results}
REPLAY=${REPLAY:-output/demo_seeds/sact_R_50_C4/seed1/model_final.pth}
mkdir -p "$OUT"
ONLY=" $* "
run() {  # [VAR=value] run NAME ARGS...: python ARGS, output to $OUT/NAME.txt with the command first
  local name="$1"; shift
  if [ "$ONLY" != "  " ] && [[ "$ONLY" != *" $name "* ]]; then return 0; fi
  local env_note=""
  [ "${SACT_NATIVE:-1}" = 0 ] && env_note="SACT_NATIVE=0 "
  echo "== $name: ${env_note}python $*"
  { echo "\$ ${env_note}python $*"; "$PYTHON" "$@" 2>&1 | grep -v -e "Warning" -e "warnings.warn" -e "^USDT" -e "^ERROR:"; } > "$OUT/$name.txt"
  tail -n 4 "$OUT/$name.txt"
}
run extractor_1thread tools/benchmark_sparse.py --part extractor --channels-last --threads 1 --clock cpu \
  --images 2 --rounds-extractor 7 --target-flops 0.5 0.7 --breakdown
run extractor_1thread_run2 tools/benchmark_sparse.py --part extractor --channels-last --threads 1 --clock cpu \
  --images 2 --rounds-extractor 7 --target-flops 0.5 0.7
run extractor_1thread_15rounds tools/benchmark_sparse.py --part extractor --channels-last --threads 1 --clock cpu \
  --images 2 --rounds-extractor 15 --target-flops 0.5 0.7
run acceptance_1thread tools/benchmark_sparse.py --part extractor --channels-last --threads 1 --clock cpu
run extractor_70_gn_1thread tools/benchmark_sparse.py --part extractor --channels-last --threads 1 --clock cpu \
  --target-flops 0.7 --breakdown
run extractor_70_frozenbn_1thread tools/benchmark_sparse.py --part extractor --channels-last --threads 1 --clock cpu \
  --target-flops 0.7 --breakdown --halt-norm FrozenBN
run extractor_replay_1thread tools/benchmark_sparse.py --part extractor --channels-last --threads 1 --clock cpu \
  --images 2 --rounds-extractor 7 --replay-weights "$REPLAY" --breakdown
run crossover_1thread tools/benchmark_sparse.py --part crossover --threads 1 --clock cpu \
  --densities 0.6 0.7 0.75 0.8 0.85 0.9 0.95 --rounds 9
run crossover_2threads tools/benchmark_sparse.py --part crossover --threads 2 \
  --densities 0.6 0.7 0.75 0.8 0.85 0.9 0.95 --rounds 9
run unit_1thread tools/benchmark_sparse.py --part unit --threads 1 --clock cpu --densities 0.25 0.5 0.75 1.0 --rounds 15
run unit_2threads tools/benchmark_sparse.py --part unit --threads 2 --densities 0.25 0.5 0.75 1.0 --rounds 15
run detector_1thread tools/benchmark_detector.py --replay-weights "$REPLAY" --threads 1 --clock cpu --images 1 --rounds 4 \
  --proposals 300
run train_demo tools/benchmark_train.py --config-file configs/Demo/sact_R_50_C4.yaml --iters 16 --warmup 2 --threads 2 \
  --json "$OUT/train_demo.json"
run train_coco_r50_800px tools/benchmark_train.py --config-file configs/COCO-Detection/sact_R_50_C4_tau0.005_1x.yaml \
  --iters 3 --warmup 1 --batches 1 --threads 2 --fixed-proposals 1000 SOLVER.IMS_PER_BATCH 1 SOLVER.BASE_LR 0.0 \
  MODEL.DEVICE cpu \
  MODEL.WEIGHTS "" DATASETS.TRAIN "('sact_demo_train',)" MODEL.ROI_HEADS.NUM_CLASSES 6 \
  INPUT.MIN_SIZE_TRAIN "(800,)" INPUT.MAX_SIZE_TRAIN 1344
