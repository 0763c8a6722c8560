"""COCO evaluation without detectron2._C, where detectron2 itself does not fall back.

detectron2's `COCOeval_opt` (fast_eval_api) runs evaluate/accumulate in C++ from `_C`. detectron2
main imports it inside ``try: ... except ImportError`` and falls back to pycocotools' COCOeval
itself; detectron2 0.6 imports it unguarded, so without `_C` the COCO evaluator cannot even be
imported. Only in that case `COCOeval_opt` becomes pycocotools' own `COCOeval` (the official
numbers; COCOeval_opt is detectron2's faster re-implementation of it).
"""
import types
from typing import List

from . import _source
from ._hooks import when_imported
from ._registry import Patch, record
from .ops import compiled_state, imports_c, provide_c_during_import, uses_compiled_ops

FAST_EVAL = "detectron2.evaluation.fast_eval_api"
COCO_EVAL = "detectron2.evaluation.coco_evaluation"


def _patch_fast_eval_api(module: types.ModuleType) -> None:
    from pycocotools.cocoeval import COCOeval

    module.COCOeval_opt = COCOeval


def unguarded_fast_eval_import() -> bool:
    """True when coco_evaluation imports COCOeval_opt at module level outside a try."""
    tree = _source.module_tree(COCO_EVAL)
    return tree is not None and _source.imports_at_module_level(tree, FAST_EVAL, "COCOeval_opt")[0]


def apply() -> List[Patch]:
    """Decide and register the COCOeval fallback."""
    ok, state = compiled_state()
    if ok or not unguarded_fast_eval_import() or not uses_compiled_ops(FAST_EVAL):
        return []
    if imports_c(FAST_EVAL):
        when_imported(FAST_EVAL, before=provide_c_during_import)
    when_imported(FAST_EVAL, after=_patch_fast_eval_api)
    patch = Patch(
        "coco_eval_pycocotools",
        f"{FAST_EVAL}.COCOeval_opt",
        f"{state}; {COCO_EVAL} imports COCOeval_opt without an ImportError fallback",
        "pycocotools.cocoeval.COCOeval (official COCO API); a placeholder _C only while "
        "fast_eval_api executes",
    )
    record(patch)
    return [patch]
