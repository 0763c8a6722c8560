"""numpy >= 1.24 / 2.x removed the aliases np.int, np.float, np.object, np.str, ... that
detectron2 0.6 still uses. Instead of adding them to numpy for everybody, the detectron2 modules
that use them get a numpy view that has them (`module.np`), and nothing else changes.
"""
import types
import warnings
from typing import Dict, List

import numpy

from ._hooks import when_imported

# The builtins numpy < 1.24 exported under these names.
_REMOVED = {"bool": bool, "int": int, "float": float, "complex": complex, "object": object,
            "str": str, "unicode": str, "long": int}

# detectron2 0.6 modules that use a removed alias (found by grepping its sources for np.<alias>).
MODULES = (
    "detectron2.data.build",  # np.int in print_instances_class_histogram (training data loader)
    "detectron2.structures.masks",  # np.bool (present again in numpy 2, kept for numpy 1.24-1.26)
    "detectron2.utils.visualizer",  # np.bool (panoptic drawing)
    "detectron2.utils.video_visualizer",  # np.bool
    "detectron2.evaluation.sem_seg_evaluation",  # np.int, np.float
    "detectron2.evaluation.pascal_voc_evaluation",  # np.bool
    "detectron2.data.datasets.pascal_voc",  # np.str
)


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
    # numpy >= 1.24 vs detectron2 0.6: removed np.<builtin> aliases.
    if getattr(module, "np", None) is numpy:
        module.np = numpy_with_aliases()


def apply() -> List[str]:
    """Register the per-module bridge (only when this numpy lacks aliases); returns the modules."""
    if not missing_aliases():
        return []
    for name in MODULES:
        when_imported(name, after=_patch)
    return list(MODULES)
