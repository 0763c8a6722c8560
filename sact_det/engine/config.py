"""Training / evaluation keys of tools/train_net.py: cfg.SACT_TRAIN.* and cfg.SACT_EVAL.*."""
from detectron2.config import CfgNode as CN

from ..config import register_config_hook

__all__ = ["add_train_config"]


@register_config_hook
def add_train_config(cfg: CN) -> None:
    """Add cfg.SACT_TRAIN (training schedule extras) and cfg.SACT_EVAL (FLOPs evaluation)."""
    cfg.SACT_TRAIN = CN()
    # Ramp the ponder-cost weight linearly from 0 to MODEL.SACT.TAU over the first N iterations
    # (0: full tau from the start). Helps detectors trained from scratch learn features first.
    cfg.SACT_TRAIN.TAU_WARMUP_ITERS = 0
    # Iteration at which the ramp starts (tau is 0 before it).
    cfg.SACT_TRAIN.TAU_WARMUP_START = 0
    # Reseed torch / numpy / random at every iteration from (SEED, rank, iteration) so that a run
    # resumed from a checkpoint draws the same random numbers as an uninterrupted one.
    cfg.SACT_TRAIN.PER_ITER_SEED = True
    # DistributedDataParallel(find_unused_parameters=...). The SACT backbone keeps every unit in the
    # training graph (masked) even where all positions halted, so False works and is faster; set
    # True for models whose parameters may be unused in an iteration.
    cfg.SACT_TRAIN.FIND_UNUSED_PARAMETERS = False
    # "SGD" (detectron2's optimizer: SOLVER.MOMENTUM, NESTEROV) or "AdamW" (betas 0.9 / 0.999); both use
    # SOLVER.BASE_LR, WEIGHT_DECAY*, BIAS_LR_FACTOR, CLIP_GRADIENTS and the LR schedule.
    cfg.SACT_TRAIN.OPTIMIZER = "SGD"
    cfg.SACT_EVAL = CN()
    # Depth of the dense ResNet whose feature-extractor FLOPs (same input sizes, same OUT_FEATURES)
    # are the 100 % reference of the FLOPs evaluator (the paper uses ResNet-101).
    cfg.SACT_EVAL.REFERENCE_DEPTH = 101
    # Also run detectron2's COCOEvaluator next to the FLOPs evaluator (False: FLOPs only).
    cfg.SACT_EVAL.COCO = True
