#!/usr/bin/env bash
# Install detectron2 v0.6 as a pure-Python distribution named "detectron2" into the current python
# (the one given as $1, default: python). Skips when an importable detectron2 >= 0.6 exists.
set -euo pipefail
PY="${1:-python}"
SHA256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29
if "$PY" -c "import detectron2, sys; v=tuple(int(x) for x in detectron2.__version__.split('.')[:2]); sys.exit(0 if v >= (0, 6) else 1)" 2>/dev/null; then
  echo "[install_detectron2] detectron2 already importable: $("$PY" -c 'import detectron2; print(detectron2.__version__, detectron2.__file__)')"
  exit 0
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
echo "[install_detectron2] fetching pb1-detectron2==0.6 sdist"
"$PY" -m pip download --quiet --no-deps --no-build-isolation pb1-detectron2==0.6 -d "$WORK"
SDIST="$WORK/pb1-detectron2-0.6.tar.gz"
echo "$SHA256  $SDIST" | sha256sum -c - >/dev/null || { echo "[install_detectron2] sha256 mismatch for $SDIST" >&2; exit 1; }
tar xzf "$SDIST" -C "$WORK"
SRC="$WORK/pb1-detectron2-0.6"
PKG="$WORK/pkg"
mkdir -p "$PKG"
cp -r "$SRC/detectron2" "$PKG/detectron2"
cp "$SRC/LICENSE" "$PKG/LICENSE"
# model_zoo configs live outside the package in the sdist layout only when present
if [ -d "$SRC/configs" ]; then cp -r "$SRC/configs" "$PKG/detectron2/model_zoo/configs"; fi
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
echo "[install_detectron2] installing detectron2 0.6 (pure Python)"
"$PY" -m pip install --quiet "$PKG"
"$PY" -m pip show detectron2 | head -3
