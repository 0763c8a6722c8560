"""Pillow >= 10 removed `Image.LINEAR`; detectron2 0.6 reads it as a default argument.

Only while a detectron2 module that reads `Image.LINEAR` executes, `PIL.Image.LINEAR` exists (as
`Image.BILINEAR`, what it always meant); Pillow is left as it is everywhere else.
"""
from typing import Callable, List, Optional

from . import _source
from ._hooks import not_yet_imported, when_imported
from ._registry import Patch, record

REMOVED = {"LINEAR": "BILINEAR"}  # Pillow < 10 alias -> the name it stood for


def _alias_during_import() -> Optional[Callable[[], None]]:
    from PIL import Image

    added = [k for k in REMOVED if not hasattr(Image, k)]
    for k in added:
        setattr(Image, k, getattr(Image, REMOVED[k]))

    def undo() -> None:
        for k in added:
            if hasattr(Image, k):
                delattr(Image, k)

    return undo


def apply() -> List[Patch]:
    """Register the import-time alias where a detectron2 module reads one this Pillow lacks."""
    import PIL
    from PIL import Image

    missing = [k for k in REMOVED if not hasattr(Image, k)]
    users = not_yet_imported(list(_source.modules_reading("detectron2", "Image", missing))) if missing else []
    if not users:
        return []
    for module in users:
        when_imported(module, before=_alias_during_import)
    patch = Patch(
        "pillow_removed_aliases",
        "PIL.Image." + ", PIL.Image.".join(missing) + " while " + ", ".join(users) + " executes",
        f"Pillow {PIL.__version__} lacks Image.{', Image.'.join(missing)}, read by these modules",
        "the alias (Image.BILINEAR) exists only during their import (default arguments)",
    )
    record(patch)
    return [patch]
