#!/usr/bin/env bash
# Set up sact_det from a fresh clone: .venv (python3 -m venv), torch + torchvision at the pinned
# versions, detectron2 (scripts/install_detectron2.sh: an importable detectron2 >= 0.6 is kept),
# then `pip install -e .[test]`. Idempotent: a stamp keyed on a hash of setup.py and these scripts
# makes a repeated run take about a second.
#
# Environment (all optional):
#   PYTHON            interpreter that creates the venv (default: python3, must be >= 3.9)
#   SACT_VENV         venv location (default: <repo>/.venv)
#   SACT_TORCH_SPEC   pip requirements for torch (default: "torch==2.14.1 torchvision==0.29.1");
#                     set it to "" to keep a torch/torchvision already installed in the venv
#   SACT_FORCE_SETUP  1: run every step even if the stamp says the venv is up to date
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${SACT_VENV:-$ROOT/.venv}"
TORCH_SPEC="${SACT_TORCH_SPEC-torch==2.14.1 torchvision==0.29.1}"
VPY="$VENV/bin/python"
STAMP="$VENV/.sact_det_setup_stamp"
CONSTRAINTS="$VENV/sact_det_constraints.txt"

log() { echo "[setup_env] $*"; }
die() { echo "[setup_env] ERROR: $*" >&2; exit 1; }
sha() { "$1" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'; }

# Serialise concurrent runs (e.g. two `make test` in one checkout) where flock exists.
if command -v flock >/dev/null 2>&1; then
  LOCK="${TMPDIR:-/tmp}/sact_det_setup_$(printf '%s' "$VENV" | cksum | cut -d' ' -f1).lock"
  exec 9>"$LOCK"
  flock 9
fi

stamp_key() {
  { echo "$VENV"; echo "torch spec: $TORCH_SPEC"; echo "PYTHONPATH: ${PYTHONPATH:-}"; "$VPY" -V 2>&1
    cat setup.py scripts/setup_env.sh scripts/install_detectron2.sh; } | sha "$VPY"
}

if [ -x "$VPY" ] && [ -f "$STAMP" ] && [ "${SACT_FORCE_SETUP:-0}" != 1 ] \
   && [ "$(cat "$STAMP")" = "$(stamp_key)" ]; then
  log "up to date: $VENV (delete $STAMP or set SACT_FORCE_SETUP=1 to redo)"
  exit 0
fi

START=$SECONDS
# 1. virtual environment
if [ ! -x "$VPY" ]; then
  command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found; set PYTHON=/path/to/python3"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
    || die "$("$PYTHON" -V 2>&1) is too old: sact_det needs Python >= 3.9 (set PYTHON=...)"
  log "creating virtual environment $VENV with $("$PYTHON" -V 2>&1)"
  "$PYTHON" -m venv "$VENV" \
    || die "'$PYTHON -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
else
  log "using virtual environment $VENV ($("$VPY" -V 2>&1))"
fi

# 2. torch + torchvision (before anything that depends on them, so pip never picks another torch)
if [ -n "$TORCH_SPEC" ]; then
  log "installing $TORCH_SPEC (can take a few minutes the first time)"
  # shellcheck disable=SC2086
  "$VPY" -m pip install --quiet --progress-bar off $TORCH_SPEC
else
  log "SACT_TORCH_SPEC is empty: keeping the torch/torchvision already in the venv"
fi
"$VPY" - "$CONSTRAINTS" <<'PYEOF' || die "torch/torchvision do not import in $VENV (see above)"
import sys
from importlib.metadata import version
import torch, torchvision  # noqa: F401  (fail here, not deep inside detectron2)
pins = [f"{name}=={version(name)}" for name in ("torch", "torchvision")]
open(sys.argv[1], "w").write("\n".join(pins) + "\n")
print("[setup_env] torch pinned for the remaining steps: " + ", ".join(pins))
PYEOF
# Every later pip call (including install_detectron2.sh's) keeps exactly this torch.
export PIP_CONSTRAINT="$CONSTRAINTS${PIP_CONSTRAINT:+ $PIP_CONSTRAINT}"

# 3. detectron2 (kept if an importable >= 0.6 exists, else v0.6 Python sources from the index)
bash scripts/install_detectron2.sh "$VPY"

# 4. sact_det itself, editable, with the test extra
if "$VPY" -c 'import importlib.metadata as m; m.version("detectron2")' >/dev/null 2>&1; then
  log "installing sact_det (pip install -e .[test])"
  "$VPY" -m pip install --quiet --progress-bar off -e ".[test]"
else
  # An importable detectron2 without pip metadata (e.g. a source checkout on PYTHONPATH):
  # detectron2 is not on the package index under that name, so install the other deps by hand.
  log "detectron2 is importable but not pip-installed: installing sact_det with --no-deps"
  mapfile -t DEPS < <("$VPY" - <<'PYEOF'
import ast
tree = ast.parse(open("setup.py").read())
for node in ast.walk(tree):
    if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "INSTALL_REQUIRES"
                                            for t in node.targets):
        print("\n".join(r for r in ast.literal_eval(node.value) if not r.startswith("detectron2")))
PYEOF
  )
  "$VPY" -m pip install --quiet --progress-bar off "${DEPS[@]}" pytest
  "$VPY" -m pip install --quiet --progress-bar off --no-deps -e .
fi

# 5. smoke check: sact_det imports and reports how it bridges this detectron2
"$VPY" -c 'import sact_det, sact_det.compat as c; s = c.status()
print("[setup_env] detectron2", s["detectron2"], "|", s["compiled_ops"])' \
  || die "sact_det does not import in $VENV (see the traceback above)"

stamp_key > "$STAMP"
log "done in $((SECONDS - START)) s: run tests with 'make test', the demo with 'make demo'"
