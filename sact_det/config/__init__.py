"""sact_det's config: :func:`add_sact_config` adds every key group (see config.py for where each lives)."""
from .classification import add_classification_config, validate_classification_cfg
from .config import add_sact_config, get_sact_cfg
from .constants import EXECUTION_MODES, SPARSE_MAX_DENSITY, STAGE_ORDER, sparse_max_density
from .defaults import add_sact_model_config, validate_sact_cfg
from .families import add_aig_config, add_blockdrop_config
from .saliency import add_saliency_config, validate_saliency_cfg
from .training import add_train_config

__all__ = ["add_sact_config", "get_sact_cfg", "add_sact_model_config", "validate_sact_cfg", "add_aig_config",
           "add_blockdrop_config", "add_train_config", "add_saliency_config", "validate_saliency_cfg",
           "add_classification_config", "validate_classification_cfg", "STAGE_ORDER", "EXECUTION_MODES",
           "SPARSE_MAX_DENSITY", "sparse_max_density"]
