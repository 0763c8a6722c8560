"""Evaluators of sact_det: COCO AP + FLOPs (flops_evaluator), saliency metrics (saliency*).

The cfg.SACT_SALIENCY keys live in sact_det/config/saliency.py.
"""
from . import saliency  # noqa: F401
from .flops_evaluator import FlopsEvaluator, format_table, summarize_records, units_from_ponder

__all__ = ["FlopsEvaluator", "format_table", "summarize_records", "units_from_ponder"]
