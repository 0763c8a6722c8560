"""add_sact_config / get_sact_cfg: every sact_det key, added explicitly (no import-time hooks).

Where the keys are defined (each with a one-line comment, validation beside it):
    cfg.MODEL.SACT                   defaults.py        (validate_sact_cfg)
    cfg.MODEL.AIG, MODEL.BLOCKDROP   families.py        (checked by the backbone constructors)
    cfg.SACT_TRAIN, cfg.SACT_EVAL    training.py        (tools/train_net.py, sact_det.engine)
    cfg.SACT_SALIENCY                saliency.py        (validate_saliency_cfg)
    cfg.SACT_CLS                     classification.py  (validate_classification_cfg)
"""
from detectron2.config import CfgNode as CN

from .classification import add_classification_config
from .defaults import add_sact_model_config
from .families import add_aig_config, add_blockdrop_config
from .saliency import add_saliency_config
from .training import add_train_config

__all__ = ["add_sact_config", "get_sact_cfg"]


def add_sact_config(cfg: CN) -> None:
    """Add every sact_det key group to ``cfg`` (detectron2's defaults), as detectron2 projects do."""
    add_sact_model_config(cfg)
    add_aig_config(cfg)
    add_blockdrop_config(cfg)
    add_train_config(cfg)
    add_saliency_config(cfg)
    add_classification_config(cfg)


def get_sact_cfg() -> CN:
    """detectron2's default config plus every sact_det key (model and tools)."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_sact_config(cfg)
    return cfg
