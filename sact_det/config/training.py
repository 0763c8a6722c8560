"""cfg.SACT_TRAIN and cfg.SACT_EVAL: training / evaluation keys of tools/train_net.py (sact_det.engine)."""
from detectron2.config import CfgNode as CN

__all__ = ["add_train_config"]


def add_train_config(cfg: CN) -> None:
    """Add cfg.SACT_TRAIN (training schedule extras) and cfg.SACT_EVAL (FLOPs evaluation)."""
    cfg.SACT_TRAIN = CN()
    # ramp the ponder-cost weight linearly from 0 to MODEL.SACT.TAU over N iterations (0: full tau from the start)
    cfg.SACT_TRAIN.TAU_WARMUP_ITERS = 0
    cfg.SACT_TRAIN.TAU_WARMUP_START = 0  # iteration at which the ramp starts (tau is 0 before it)
    # reseed torch / numpy / random every iteration from (SEED, rank, iter): a resumed run draws the same numbers
    cfg.SACT_TRAIN.PER_ITER_SEED = True
    # DDP find_unused_parameters: False works for SACT (halted units stay in the graph, masked), True if some may be unused
    cfg.SACT_TRAIN.FIND_UNUSED_PARAMETERS = False
    # "SGD" (SOLVER.MOMENTUM, NESTEROV) or "AdamW" (betas 0.9/0.999); both use the rest of SOLVER (LR, decay, clipping)
    cfg.SACT_TRAIN.OPTIMIZER = "SGD"
    cfg.SACT_EVAL = CN()
    # depth of the dense ResNet whose FLOPs (same inputs, same OUT_FEATURES) are 100 % (paper: ResNet-101)
    cfg.SACT_EVAL.REFERENCE_DEPTH = 101
    cfg.SACT_EVAL.COCO = True  # also run detectron2's COCOEvaluator next to the FLOPs evaluator (False: FLOPs only)
