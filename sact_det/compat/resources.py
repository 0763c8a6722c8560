"""setuptools >= 81 no longer ships `pkg_resources`; detectron2 0.6's model_zoo imports it.

Only while detectron2.model_zoo.model_zoo executes, `pkg_resources` resolves to a minimal shim
(resource_filename via importlib.resources); other code still sees no pkg_resources.
"""
import importlib.resources
import importlib.util
import os
import sys
import types
from typing import Callable, List, Optional

from ._hooks import when_imported


def resource_filename(package: str, resource: str) -> str:
    """Path of `resource` inside installed `package` (the pkg_resources function, file packages)."""
    return os.fspath(importlib.resources.files(package).joinpath(resource))


def _shim() -> types.ModuleType:
    mod = types.ModuleType("pkg_resources", "sact_det shim: resource_filename only")
    mod.resource_filename = resource_filename  # type: ignore[attr-defined]
    return mod


def _install_during_import() -> Optional[Callable[[], None]]:
    # setuptools >= 81 vs detectron2 0.6 model_zoo/model_zoo.py `import pkg_resources`.
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return None  # the real one exists
    sys.modules["pkg_resources"] = _shim()

    def undo() -> None:
        sys.modules.pop("pkg_resources", None)

    return undo


def apply() -> List[str]:
    """Register the shim (only used if pkg_resources is missing); returns the module it serves."""
    when_imported("detectron2.model_zoo.model_zoo", before=_install_during_import)
    if importlib.util.find_spec("pkg_resources") is not None:
        return []
    return ["detectron2.model_zoo.model_zoo"]
