#!/usr/bin/env bash
# Train the dense demo detector of the same depth as the SACT one and print both side by side
# (AP, feature-extractor FLOPs mean ± std, % of dense). A run whose output folder already holds
# model_final.pth and eval_results.json is reused (FORCE=1 retrains both).
#
#   bash scripts/demo_compare.sh [KEY VALUE ...]   # overrides for both trainings
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
SACT_CONFIG=${SACT_CONFIG:-configs/Demo/sact_R_50_C4.yaml}
DENSE_CONFIG=${DENSE_CONFIG:-configs/Demo/faster_rcnn_R_50_C4.yaml}
SACT_OUT=${SACT_OUT:-output/demo/sact_R_50_C4}
DENSE_OUT=${DENSE_OUT:-output/demo/faster_rcnn_R_50_C4}
start=$(date +%s)

train() {  # config, output folder, overrides...
  local config=$1 out=$2; shift 2
  if [ "${FORCE:-0}" != "1" ] && [ -f "$out/model_final.pth" ] && [ -f "$out/eval_results.json" ]; then
    echo "== reusing the finished run in $out (FORCE=1 retrains)"
    return
  fi
  echo "== training + evaluation: $config -> $out"
  "$PYTHON" tools/train_net.py --config-file "$config" OUTPUT_DIR "$out" "$@"
}

train "$DENSE_CONFIG" "$DENSE_OUT" "$@"
train "$SACT_CONFIG" "$SACT_OUT" "$@"

echo "== SACT vs dense on sact_demo_val (FLOPs per image of the feature extractor res2-res4)"
"$PYTHON" tools/plot_tradeoff.py "$SACT_OUT" "$DENSE_OUT" --x dense --output output/demo/compare
end=$(date +%s)
echo "time: $((end - start)) s wall;" \
     "load average: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)"
