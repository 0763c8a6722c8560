"""COCO evaluation without detectron2._C: detectron2 0.6's COCOEvaluator defaults to
`COCOeval_opt` (evaluate/accumulate in C++ from _C); use pycocotools' own COCOeval instead, which
gives the official numbers (COCOeval_opt is detectron2's faster re-implementation of it).
"""
import types

from ._hooks import when_imported


def _patch_fast_eval_api(module: types.ModuleType) -> None:
    # detectron2 0.6 without _C: COCOeval_opt calls _C.COCOevalEvaluateImages / Accumulate.
    from pycocotools.cocoeval import COCOeval

    module.COCOeval_opt = COCOeval


def apply() -> None:
    """Call only when detectron2._C is missing (a source build keeps COCOeval_opt)."""
    when_imported("detectron2.evaluation.fast_eval_api", after=_patch_fast_eval_api)
