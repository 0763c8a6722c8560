"""The cfg.SACT_TRAIN / cfg.SACT_EVAL keys, defined in sact_det/config/training.py (re-exported here)."""
from ..config.training import add_train_config

__all__ = ["add_train_config"]
