"""cfg.MODEL.SACT: keys of the SACT / ACT backbone (defaults follow the original SACT implementation)."""
from detectron2.config import CfgNode as CN

from .constants import EXECUTION_MODES, SPARSE_MAX_DENSITY, STAGE_ORDER

__all__ = ["add_sact_model_config", "validate_sact_cfg", "VALID_MODES", "VALID_EXECUTION", "VALID_STAGES",
           "VALID_VARIANTS", "VALID_HALT_INITS"]

VALID_MODES = ("sact", "act", "none")
VALID_EXECUTION = EXECUTION_MODES
VALID_STAGES = STAGE_ORDER
VALID_VARIANTS = ("detectron2", "original")
VALID_HALT_INITS = ("variance_scaling", "zeros")


def add_sact_model_config(cfg: CN) -> None:
    """Add the cfg.MODEL.SACT keys."""
    cfg.MODEL.SACT = CN()
    cfg.MODEL.SACT.MODE = "sact"  # "sact" (per position), "act" (per image) or "none" (dense ResNet)
    cfg.MODEL.SACT.TAU = 0.005  # ponder-cost weight: loss_ponder = TAU * sum_stages mean(rho)
    cfg.MODEL.SACT.EPS = 0.01  # a position halts when the cumulative halting score reaches 1 - EPS
    cfg.MODEL.SACT.HALT_BIAS_INIT = -3.0  # initial bias of the halting logits (sigmoid(-3) ~ 0.047)
    cfg.MODEL.SACT.HALT_KERNEL_SIZE = 3  # kernel of the spatial halting conv (SACT)
    cfg.MODEL.SACT.HALT_NORM = "BN"  # norm before the halting convs: BN, SyncBN, FrozenBN, GN, "" (none)
    cfg.MODEL.SACT.STAGES = ["res2", "res3", "res4"]  # the adaptive stages; others stay dense
    cfg.MODEL.SACT.EXECUTION = "dense"  # inference path: "dense" (masked), "sparse" (gather/scatter), "auto"
    # "auto": sparse when an image's active fraction is below this (break-even); -1: by map width (constants.py)
    cfg.MODEL.SACT.SPARSE_MAX_DENSITY = SPARSE_MAX_DENSITY
    cfg.MODEL.SACT.HALT_INIT = "variance_scaling"  # halting conv weights: "variance_scaling" (He, as the original) or "zeros"
    cfg.MODEL.SACT.VARIANT = "detectron2"  # "detectron2" (post-activation ResNets) or "original" (the SACT code's networks)
    cfg.MODEL.SACT.ORIGINAL_UNITS = []  # VARIANT original, ImageNet net: units per block, e.g. [3, 4, 23, 3]; [] = from DEPTH
    cfg.MODEL.SACT.ORIGINAL_BASE_CHANNELS = 64  # VARIANT original, ImageNet net: bottleneck width of block 1 (blocks: x1, x2, x4, x8)
    cfg.MODEL.SACT.META_ARCHITECTURE = "GeneralizedRCNN"  # META_ARCHITECTURE AdaptiveDetector: the detectron2 meta-architecture it wraps (e.g. RetinaNet)


def validate_sact_cfg(cfg: CN) -> None:
    """Raise ValueError naming the key when a cfg.MODEL.SACT value is invalid."""
    s = cfg.MODEL.SACT
    if s.MODE not in VALID_MODES:
        raise ValueError(f"cfg.MODEL.SACT.MODE must be one of {VALID_MODES}, got {s.MODE!r}")
    if not float(s.TAU) >= 0.0:
        raise ValueError(f"cfg.MODEL.SACT.TAU must be >= 0, got {s.TAU}")
    if not 0.0 < float(s.EPS) < 1.0:
        raise ValueError(f"cfg.MODEL.SACT.EPS must be in (0, 1), got {s.EPS}")
    if s.EXECUTION not in VALID_EXECUTION:
        raise ValueError(f"cfg.MODEL.SACT.EXECUTION must be one of {VALID_EXECUTION}, got {s.EXECUTION!r}")
    if int(s.HALT_KERNEL_SIZE) < 1 or int(s.HALT_KERNEL_SIZE) % 2 == 0:
        raise ValueError(f"cfg.MODEL.SACT.HALT_KERNEL_SIZE must be a positive odd integer, got {s.HALT_KERNEL_SIZE}")
    if not (0.0 <= float(s.SPARSE_MAX_DENSITY) <= 1.0 or float(s.SPARSE_MAX_DENSITY) == -1.0):
        raise ValueError(f"cfg.MODEL.SACT.SPARSE_MAX_DENSITY must be in [0, 1], or -1 (by map width), "
                         f"got {s.SPARSE_MAX_DENSITY}")
    if s.HALT_INIT not in VALID_HALT_INITS:
        raise ValueError(f"cfg.MODEL.SACT.HALT_INIT must be one of {VALID_HALT_INITS}, got {s.HALT_INIT!r}")
    if s.VARIANT not in VALID_VARIANTS:
        raise ValueError(f"cfg.MODEL.SACT.VARIANT must be one of {VALID_VARIANTS}, got {s.VARIANT!r}")
    units = [int(u) for u in s.ORIGINAL_UNITS]
    if units and (len(units) != 4 or min(units) < 1):
        raise ValueError(f"cfg.MODEL.SACT.ORIGINAL_UNITS must be empty or 4 positive unit counts, got {list(units)}")
    if int(s.ORIGINAL_BASE_CHANNELS) < 1:
        raise ValueError(f"cfg.MODEL.SACT.ORIGINAL_BASE_CHANNELS must be >= 1, got {s.ORIGINAL_BASE_CHANNELS}")
    if s.VARIANT == "original" and s.EXECUTION != "dense":
        raise ValueError(f"cfg.MODEL.SACT.EXECUTION {s.EXECUTION!r} is not implemented for VARIANT original "
                         "(its pre-activation units have no sparse kernels); use EXECUTION dense")
    if not s.META_ARCHITECTURE or s.META_ARCHITECTURE == "AdaptiveDetector":
        raise ValueError(f"cfg.MODEL.SACT.META_ARCHITECTURE must name the detectron2 meta-architecture that "
                         f"AdaptiveDetector wraps (e.g. GeneralizedRCNN, RetinaNet), got {s.META_ARCHITECTURE!r}")
    bad = [st for st in s.STAGES if st not in VALID_STAGES]
    if bad:
        raise ValueError(f"cfg.MODEL.SACT.STAGES has unknown stage name(s) {bad}; valid: {VALID_STAGES}")
    if len(set(s.STAGES)) != len(s.STAGES):
        raise ValueError(f"cfg.MODEL.SACT.STAGES has duplicates: {list(s.STAGES)}")
