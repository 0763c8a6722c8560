#!/usr/bin/env bash
# Install detectron2 v0.6 as a pure-Python distribution named "detectron2" into the python given as
# $1 (default: python). Skips when that python already imports a detectron2 >= 0.6 (for example
# one built from source, which keeps its compiled ops).
#
# detectron2 is not on the package index under its own name; the sdist pb1-detectron2==0.6 holds
# v0.6's Python sources unchanged (no detectron2/layers/csrc, so its own setup.py cannot build).
# Its sha256 is checked, and its detectron2/ package (plus the model-zoo configs) is installed as a
# real distribution named detectron2, so `pip show detectron2` and `pip uninstall detectron2` work.
# The missing compiled ops are bridged at run time by sact_det/compat/.
set -euo pipefail
PY="${1:-python}"
SHA256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29
log() { echo "[install_detectron2] $*"; }

if "$PY" -c "import detectron2, sys; v=tuple(int(x) for x in detectron2.__version__.split('.')[:2]); sys.exit(0 if v >= (0, 6) else 1)" 2>/dev/null; then
  log "detectron2 already importable, keeping it: $("$PY" -c 'import detectron2; print(detectron2.__version__, "@", detectron2.__path__[0])')"
  exit 0
fi
"$PY" -c "import torch" 2>/dev/null || { echo "[install_detectron2] install torch first (its setup.py imports torch)" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
log "fetching the pb1-detectron2==0.6 sdist"
# --no-build-isolation: the sdist's setup.py imports torch while pip reads its metadata.
"$PY" -m pip download --quiet --progress-bar off --no-deps --no-binary :all: --no-build-isolation \
  pb1-detectron2==0.6 -d "$WORK/dl"
SDIST="$(find "$WORK/dl" -maxdepth 1 -name '*.tar.gz' | head -n 1)"
[ -n "$SDIST" ] || { echo "[install_detectron2] pip download gave no .tar.gz sdist in $WORK/dl" >&2; exit 1; }
GOT="$("$PY" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$SDIST")"
if [ "$GOT" != "$SHA256" ]; then
  echo "[install_detectron2] sha256 mismatch for $(basename "$SDIST"): got $GOT, expected $SHA256" >&2
  exit 1
fi
log "sha256 verified: $(basename "$SDIST")"
mkdir -p "$WORK/src"
tar xzf "$SDIST" -C "$WORK/src"
SRC="$(find "$WORK/src" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
[ -f "$SRC/detectron2/__init__.py" ] || { echo "[install_detectron2] no detectron2/ package in $SDIST" >&2; exit 1; }
PKG="$WORK/pkg"
mkdir -p "$PKG"
cp -r "$SRC/detectron2" "$PKG/detectron2"
cp "$SRC/LICENSE" "$PKG/LICENSE"
# model_zoo.get_config_file() looks for detectron2/model_zoo/configs (a symlink in the git repo)
if [ -d "$SRC/configs" ] && [ ! -e "$PKG/detectron2/model_zoo/configs" ]; then
  cp -r "$SRC/configs" "$PKG/detectron2/model_zoo/configs"
fi
cat > "$PKG/setup.py" <<'PYEOF'
from setuptools import find_packages, setup

setup(
    name="detectron2",
    version="0.6",
    description="detectron2 v0.6 Python sources (from the pb1-detectron2 sdist), no compiled ops",
    license="Apache-2.0",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},
    python_requires=">=3.7",
    install_requires=[
        "Pillow>=7.1", "matplotlib", "pycocotools>=2.0.2", "termcolor>=1.1", "yacs>=0.1.8",
        "tabulate", "cloudpickle", "tqdm>4.29.0", "tensorboard", "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.10", "omegaconf>=2.1", "hydra-core>=1.1",
    ],
)
PYEOF
log "installing detectron2 0.6 (pure Python) and its dependencies"
"$PY" -m pip install --quiet --progress-bar off "$PKG"
"$PY" -m pip show detectron2 | sed -n '1,2p' | sed 's/^/[install_detectron2] /'
