#!/usr/bin/env bash
# The README's main command (`make demo`): train the SACT demo detector from scratch on the
# embedded shapes data set, evaluate it (COCO AP, feature-extractor FLOPs beside the dense
# same-architecture FLOPs on the same images, ponder cost per stage), and draw ponder maps.
#
#   bash scripts/demo.sh [KEY VALUE ...]         # extra train_net.py config overrides
#   OUT=output/demo/my_run bash scripts/demo.sh  # output folder
#   RESUME=1 bash scripts/demo.sh                # continue an interrupted run
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
CONFIG=${CONFIG:-configs/Demo/sact_R_50_C4.yaml}
OUT=${OUT:-output/demo/sact_R_50_C4}
RESUME_FLAG=()
if [ "${RESUME:-0}" = "1" ]; then RESUME_FLAG=(--resume); fi
start=$(date +%s)

echo "== [1/3] training + evaluation: $CONFIG -> $OUT"
"$PYTHON" tools/train_net.py --config-file "$CONFIG" ${RESUME_FLAG[@]+"${RESUME_FLAG[@]}"} OUTPUT_DIR "$OUT" "$@"
trained=$(date +%s)

echo "== [2/3] ponder-map pictures -> $OUT/ponder_maps"
"$PYTHON" tools/draw_ponder_maps.py --config-file "$CONFIG" --dataset sact_demo_val --num-images 8 \
  --output "$OUT/ponder_maps" "$@" MODEL.WEIGHTS "$OUT/model_final.pth"

echo "== [3/3] summary (sact_demo_val; FLOPs per image of the feature extractor res2-res4)"
"$PYTHON" tools/plot_tradeoff.py "$OUT" --x dense --output "$OUT/tradeoff"
end=$(date +%s)
echo "time: training + evaluation $((trained - start)) s, total $((end - start)) s wall;" \
     "load average: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)"
echo "outputs: $OUT/eval_results.json, $OUT/metrics.json, $OUT/ponder_maps/*.png, $OUT/tradeoff.{png,csv}"
