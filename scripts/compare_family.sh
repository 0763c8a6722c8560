#!/usr/bin/env bash
# Train the demo detector (quarter-width ResNet-50 C4 on the embedded shapes data) five ways and draw
# them on one AP-versus-FLOPs plot: dense, SACT, ACT, ConvNet-AIG and BlockDrop.
#
#   scripts/compare_family.sh [OUT_ROOT]          # default OUT_ROOT: output/compare
#
# Each run writes OUT_ROOT/<name>/ (checkpoints, metrics.json, eval_results.json); a run whose
# eval_results.json exists is skipped, so an interrupted comparison continues where it stopped
# (FORCE=1 retrains everything). BlockDrop starts from the trained dense detector (as the original
# starts from a trained ResNet): a curriculum run trains the policy alone, then policy and detector
# are fine-tuned jointly. The plot and table go to OUT_ROOT/tradeoff.{png,csv}.
#
# Environment: PYTHON (default .venv/bin/python, else python), NUM_GPUS (processes; CPU gloo
# processes without CUDA; default 1), EXTRA (overrides for every run, e.g. "SOLVER.MAX_ITER 60").
# On 2 CPU cores the whole comparison takes about 50 minutes (estimated from the measured speeds: 500 iterations of 0.7-1 s per
# model, BlockDrop 2 x 200 iterations of 2-3 s).
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT="${1:-output/compare}"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python; fi
fi
NUM_GPUS="${NUM_GPUS:-1}"
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"

train() {  # train NAME CONFIG [KEY VALUE ...]
  local name="$1" cfg="$2"
  shift 2
  local out="$ROOT/$name"
  if [[ -f "$out/eval_results.json" && -z "${FORCE:-}" ]]; then
    echo "[compare_family] $name: $out/eval_results.json exists, skipping"
    return
  fi
  echo "[compare_family] training $name ($cfg) -> $out"
  "$PY" tools/train_net.py --num-gpus "$NUM_GPUS" --config-file "$cfg" \
    OUTPUT_DIR "$out" "$@" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
}

need_weights() {  # need_weights FILE RUN: BlockDrop needs the previous run's final model
  if [[ ! -f "$1" ]]; then
    echo "[compare_family] error: $1 is missing (run $2 did not finish)" >&2
    exit 1
  fi
}

train faster_rcnn_R_50_C4 configs/Demo/faster_rcnn_R_50_C4.yaml
train sact_R_50_C4 configs/Demo/sact_R_50_C4.yaml
train act_R_50_C4 configs/Demo/sact_R_50_C4.yaml MODEL.SACT.MODE act
train aig_R_50_C4 configs/Demo/aig_R_50_C4.yaml
need_weights "$ROOT/faster_rcnn_R_50_C4/model_final.pth" faster_rcnn_R_50_C4
train blockdrop_R_50_C4_curriculum configs/Demo/blockdrop_R_50_C4_curriculum.yaml \
  MODEL.WEIGHTS "$ROOT/faster_rcnn_R_50_C4/model_final.pth"
need_weights "$ROOT/blockdrop_R_50_C4_curriculum/model_final.pth" blockdrop_R_50_C4_curriculum
train blockdrop_R_50_C4 configs/Demo/blockdrop_R_50_C4.yaml \
  MODEL.WEIGHTS "$ROOT/blockdrop_R_50_C4_curriculum/model_final.pth"

"$PY" tools/plot_tradeoff.py \
  "$ROOT/faster_rcnn_R_50_C4" "$ROOT/sact_R_50_C4" "$ROOT/act_R_50_C4" "$ROOT/aig_R_50_C4" "$ROOT/blockdrop_R_50_C4" \
  --labels "dense,SACT tau=0.05,ACT tau=0.05,ConvNet-AIG t=0.5,BlockDrop" \
  --x dense --output "$ROOT/tradeoff"
