"""Pillow >= 10 removed `Image.LINEAR`, which detectron2 0.6 uses as a default argument."""
from typing import List


def apply() -> List[str]:
    """Add the removed aliases that detectron2 0.6 reads at import time; returns what was added."""
    from PIL import Image

    added = []
    if not hasattr(Image, "LINEAR"):
        # Pillow >= 10 vs detectron2 0.6 data/transforms/transform.py (ExtentTransform default).
        Image.LINEAR = Image.BILINEAR  # type: ignore[attr-defined]
        added.append("PIL.Image.LINEAR")
    return added
