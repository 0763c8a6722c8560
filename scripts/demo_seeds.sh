#!/usr/bin/env bash
# The demo's run-to-run spread: the SACT and the dense demo detectors trained with SEED 1, 2, 3 each, then one
# table of AP and extractor FLOPs (mean +- std over seeds) by tools/seed_table.py. About 6 x 7 min on 2 cores.
#
#   bash scripts/demo_seeds.sh                  # all seeds of both
#   SEEDS="1 2" CONFIGS="configs/Demo/sact_R_50_C4.yaml" bash scripts/demo_seeds.sh
#   OUT=output/seeds bash scripts/demo_seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-output/demo_seeds}
SEEDS=${SEEDS:-1 2 3}
CONFIGS=${CONFIGS:-configs/Demo/sact_R_50_C4.yaml configs/Demo/faster_rcnn_R_50_C4.yaml}
runs=()
for cfg in $CONFIGS; do
  for seed in $SEEDS; do
    dir="$OUT/$(basename "$cfg" .yaml)/seed$seed"
    runs+=("$dir")
    if [ -f "$dir/eval_results.json" ]; then echo "== $dir: done before, kept"; continue; fi
    echo "== $cfg, SEED $seed -> $dir"
    "$PYTHON" tools/train_net.py --config-file "$cfg" SEED "$seed" OUTPUT_DIR "$dir"
  done
done
"$PYTHON" tools/seed_table.py "${runs[@]}" --output "$OUT/seed_table.md"
