"""numpy >= 1.24 removed the aliases np.int, np.float, np.object, np.str, ... (numpy 2 brought
np.bool back) that detectron2 0.6 still uses. Instead of adding them to numpy for everybody, each
detectron2 module whose source reads an alias this numpy lacks gets a numpy view that has them
(`module.np`); numpy itself and every other module are left alone.
"""
import types
import warnings
from typing import Dict, List

import numpy

from . import _source
from ._hooks import when_imported
from ._registry import Patch, record

# The builtins numpy < 1.24 exported under these names.
_REMOVED = {"bool": bool, "int": int, "float": float, "complex": complex, "object": object,
            "str": str, "unicode": str, "long": int}


def missing_aliases() -> Dict[str, type]:
    """The aliases this numpy lacks, e.g. {"int": int, "float": float, ...} on numpy 2."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns on access to some removed names
        return {k: v for k, v in _REMOVED.items() if not hasattr(numpy, k)}


def numpy_with_aliases() -> types.ModuleType:
    """A module object that behaves as numpy and also has the removed aliases."""
    view = types.ModuleType("numpy", numpy.__doc__)
    view.__dict__.update({k: v for k, v in vars(numpy).items() if k not in ("__name__", "__doc__")})
    view.__getattr__ = lambda name: getattr(numpy, name)  # type: ignore[attr-defined]  # lazy ones
    view.__dict__.update(missing_aliases())
    return view


def _patch(module: types.ModuleType) -> None:
    if getattr(module, "np", None) is numpy:
        module.np = numpy_with_aliases()


def apply() -> List[Patch]:
    """Register the per-module numpy view where a module uses an alias this numpy lacks."""
    missing = missing_aliases()
    users = _source.modules_reading("detectron2", "np", missing) if missing else {}
    if not users:
        return []
    for name in users:
        when_imported(name, after=_patch)
    used = sorted({a for aliases in users.values() for a in aliases})
    patch = Patch(
        "numpy_removed_aliases",
        "np in " + ", ".join(users),
        f"numpy {numpy.__version__} lacks np.{', np.'.join(used)}, which these modules read",
        "their module-level `np` becomes a numpy view with the removed aliases (numpy itself "
        "unchanged)",
    )
    record(patch)
    return [patch]
