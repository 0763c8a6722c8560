"""The only place that knows about detectron2 versions and today's stack.

`apply()` runs when sact_det is imported, before any detectron2 submodule is imported; it is
idempotent. Patches are applied lazily, when the patched detectron2 module is first imported:

- ops.py             detectron2._C missing (pure-Python 0.6): deformable conv via torchvision,
                     rotated-box ops raise MissingCompiledOpError with build instructions
- evaluation.py      detectron2._C missing: COCOEvaluator uses pycocotools' COCOeval
- pillow.py          Pillow >= 10: Image.LINEAR
- resources.py       setuptools >= 81: pkg_resources for detectron2.model_zoo
- np_aliases.py      numpy >= 1.24: np.int / np.float / ... inside the detectron2 modules using them
- torch_warnings.py  torch 2.14 (deprecated jit.script): import-time FutureWarnings (detectron2,
                     fvcore); torch >= 1.10: meshgrid without indexing= in the anchor generator
- distributed.py     CPU (gloo) `launch` and a `create_ddp_model` that works for CPU models

With a detectron2 built from source (detectron2._C loads), ops.py and evaluation.py change nothing.
"""
from typing import Any, Dict

from . import distributed, evaluation, np_aliases, ops, pillow, resources, torch_warnings
from .distributed import create_ddp_model, find_free_port, launch
from .ops import MissingCompiledOpError, has_compiled_ops

__all__ = ["apply", "status", "launch", "create_ddp_model", "find_free_port",
           "MissingCompiledOpError", "has_compiled_ops"]

_STATUS: Dict[str, Any] = {}


def apply() -> Dict[str, Any]:
    """Apply every bridge needed by the installed versions (once); returns `status()`."""
    if _STATUS:
        return status()
    try:
        import detectron2
    except ImportError as e:
        raise ImportError(
            f"sact_det needs detectron2 >= 0.6 ({e}). Run `make setup` in the sact_det checkout, "
            "or `bash scripts/install_detectron2.sh <python>` after installing torch."
        ) from e

    fallbacks = ops.apply()
    if fallbacks:
        evaluation.apply()
    _STATUS.update(
        detectron2=f"{detectron2.__version__} @ {detectron2.__path__[0]}",
        compiled_ops=ops.compiled_state()[1],
        python_fallbacks=fallbacks,
        pillow=pillow.apply(),
        numpy_alias_modules=np_aliases.apply(),
        pkg_resources_shim=resources.apply(),
        torch_warnings=torch_warnings.apply(),
    )
    distributed.apply()
    return status()


def status() -> Dict[str, Any]:
    """What apply() found and did (for logs and bug reports)."""
    return dict(_STATUS)


apply()
