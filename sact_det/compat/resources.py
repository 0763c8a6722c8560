"""setuptools >= 81 no longer ships `pkg_resources`; detectron2's model_zoo (0.6 and main) imports it.

Only where pkg_resources is missing and a detectron2 module imports it, `pkg_resources` resolves to
a minimal shim (resource_filename via importlib.resources) while that module executes; other code
still sees no pkg_resources.
"""
import ast
import importlib.resources
import importlib.util
import os
import re
import sys
import types
from typing import Callable, List, Optional

from . import _source
from ._hooks import not_yet_imported, when_imported
from ._registry import Patch, record


def resource_filename(package: str, resource: str) -> str:
    """Path of `resource` inside installed `package` (the pkg_resources function, file packages)."""
    return os.fspath(importlib.resources.files(package).joinpath(resource))


def _shim() -> types.ModuleType:
    mod = types.ModuleType("pkg_resources", "sact_det shim: resource_filename only")
    mod.resource_filename = resource_filename  # type: ignore[attr-defined]
    return mod


def _install_during_import() -> Optional[Callable[[], None]]:
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return None  # the real one exists
    sys.modules["pkg_resources"] = _shim()

    def undo() -> None:
        sys.modules.pop("pkg_resources", None)

    return undo


def modules_importing(name: str, top: str = "detectron2") -> List[str]:
    """Modules below `top` with a module-level `import name`."""
    found = []
    for module in _source.modules_matching(top, name, r"(?m)^import\s+%s\b" % re.escape(name)):
        tree = _source.module_tree(module)
        if tree is not None and any(isinstance(n, ast.Import) and any(a.name == name for a in n.names)
                                    for n in tree.body):
            found.append(module)
    return found


def apply() -> List[Patch]:
    """Register the shim for the modules that import pkg_resources, if it is missing."""
    if importlib.util.find_spec("pkg_resources") is not None:
        return []
    users = not_yet_imported(modules_importing("pkg_resources"))
    if not users:
        return []
    for module in users:
        when_imported(module, before=_install_during_import)
    patch = Patch(
        "pkg_resources_shim",
        "import pkg_resources in " + ", ".join(users),
        "pkg_resources is not installed (setuptools >= 81) and these modules import it",
        "a shim with resource_filename (importlib.resources) during their import only",
    )
    record(patch)
    return [patch]
