"""Evaluators of sact_det: COCO AP + FLOPs (flops_evaluator), saliency metrics (saliency*).

Importing this package registers the cfg.SACT_SALIENCY keys (saliency.py) with get_sact_cfg().
"""
from . import saliency  # noqa: F401  (cfg.SACT_SALIENCY keys)
from .flops_evaluator import FlopsEvaluator, format_table, summarize_records, units_from_ponder

__all__ = ["FlopsEvaluator", "format_table", "summarize_records", "units_from_ponder"]
