"""Configs of the classification tool: the cfg.SACT_CLS keys (defined in sact_det/config/classification.py)
and :func:`get_classification_cfg`, sact_det's config with the classifier's defaults."""
from detectron2.config import CfgNode as CN

from ..config import get_sact_cfg
from ..config.classification import VALID_FORMATS, VALID_UNITS, add_classification_config, validate_classification_cfg

__all__ = ["add_classification_config", "get_classification_cfg", "validate_classification_cfg", "VALID_FORMATS",
           "VALID_UNITS"]


def get_classification_cfg() -> CN:
    """:func:`get_sact_cfg` with the classifier's defaults: BN norms (nothing frozen), TAU 0.01, CUDA if present."""
    cfg = get_sact_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_sact_resnet_backbone"  # the family; SACT / ACT / dense by MODEL.SACT.MODE
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.SACT.HALT_NORM = "BN"
    cfg.MODEL.SACT.TAU = 0.01
    cfg.MODEL.DEVICE = "cuda" if _cuda() else "cpu"
    return cfg


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
