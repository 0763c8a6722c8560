"""The only place that knows how detectron2 and today's stack differ from what sact_det needs.

`apply()` runs when sact_det is imported, before any detectron2 submodule is imported; it is
idempotent. Every patch is decided by feature detection in *this* environment: the source of the
detectron2 module concerned (read without importing it), a signature, an attribute, an import
that fails, a probe call. Never by a version number. Patches take effect when the patched
detectron2 module is first imported. A patch never changes a default detectron2 has.

Candidates (module: applied when ...):

- ops.py             detectron2._C does not load and detectron2's deform_conv calls _C kernels
                     (torchvision deform conv), or its rotated-box ops call _C / torch.ops.detectron2
                     (clear MissingCompiledOpError)
- evaluation.py      detectron2._C does not load and coco_evaluation imports COCOeval_opt
                     without an ImportError fallback (0.6): pycocotools' COCOeval
- pillow.py          Pillow lacks Image.LINEAR and a detectron2 module reads it (0.6)
- resources.py       pkg_resources is missing and a detectron2 module imports it (model_zoo)
- np_aliases.py      numpy lacks np.int/np.float/... and a detectron2 module reads them (0.6)
- torch_warnings.py  torch.jit.script warns and a detectron2/fvcore module scripts at import;
                     torch.meshgrid warns without indexing= and a detectron2 function omits it
- distributed.py     detectron2's launch is GPU-only (0.6): sact_det.compat.launch adds gloo on
                     CPU; detectron2's create_ddp_model passes device_ids for CPU models (probed)

`status()` lists exactly the patches applied, each with what was detected.
"""
import importlib
from typing import Any, Dict

from . import _registry, distributed, evaluation, np_aliases, ops, pillow, resources, torch_warnings
from ._registry import Patch
from .distributed import create_ddp_model, find_free_port, launch
from .ops import MissingCompiledOpError, has_compiled_ops

__all__ = ["apply", "status", "launch", "create_ddp_model", "find_free_port",
           "MissingCompiledOpError", "has_compiled_ops", "Patch"]

# detectron2 modules whose patch is decided when they are imported (a probe needs the module)
DEFERRED = (distributed.DEFAULTS,)

_APPLIED = False


def apply() -> None:
    """Detect what this environment lacks and register the patches for it (once)."""
    global _APPLIED
    if _APPLIED:
        return
    try:
        import detectron2  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"sact_det needs detectron2 >= 0.6 ({e}). Run `make setup` in the sact_det checkout, "
            "or `bash scripts/install_detectron2.sh <python>` after installing torch."
        ) from e
    for part in (ops, evaluation, pillow, resources, np_aliases, torch_warnings, distributed):
        part.apply()
    _APPLIED = True


def status() -> Dict[str, Any]:
    """detectron2 in use, whether its compiled ops load, and every patch applied with what was
    detected: {"detectron2", "compiled_ops", "patches": {name: {target, detected, change}}}.

    Imports the few detectron2 modules whose patch is decided at their import (see DEFERRED), so
    the list is complete.
    """
    import detectron2

    for name in DEFERRED:
        importlib.import_module(name)
    return {
        "detectron2": f"{detectron2.__version__} @ {detectron2.__path__[0]}",
        "compiled_ops": ops.compiled_state()[1],
        "patches": _registry.as_dict(),
    }


apply()
