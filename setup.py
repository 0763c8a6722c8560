"""sact_det: Spatially Adaptive Computation Time (SACT) Faster R-CNN on detectron2.

Install torch/torchvision first (scripts/setup_env.sh pins the tested pair), then detectron2 >= 0.6
(scripts/install_detectron2.sh, or your own source build), then `pip install -e .[test]`.
Nothing here imports torch, so pip never has to build or pick a torch to read this file.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "sact_det" / "__init__.py").read_text(), re.M
).group(1)

INSTALL_REQUIRES = [
    "torch>=1.8",  # installed beforehand at the pinned version; a present torch is never replaced
    "torchvision>=0.9",
    "detectron2>=0.6",  # not on PyPI by this name: scripts/install_detectron2.sh or a source build
    "pycocotools>=2.0.2",
    "opencv-python-headless",
    "numpy",
    "pyyaml",
    "matplotlib",
    "scipy",
    "tqdm",
]

setup(
    name="sact_det",
    version=VERSION,
    description="Spatially Adaptive Computation Time (SACT) Faster R-CNN on detectron2",
    long_description=__doc__,
    license="Apache-2.0",
    packages=find_packages(include=["sact_det", "sact_det.*"]),
    package_data={"sact_det.modeling.execution.native": ["kernels.c"]},  # compiled on first use
    python_requires=">=3.9",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest"]},
)
