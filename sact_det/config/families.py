"""cfg.MODEL.AIG and cfg.MODEL.BLOCKDROP: keys of the ConvNet-AIG and BlockDrop backbones.

Their values are checked where they are used (the backbone constructors in modeling/skipping/aig.py and
modeling/skipping/blockdrop.py, which name the key in the ValueError).
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_aig_config", "add_blockdrop_config"]


def add_aig_config(cfg: CN) -> None:
    """Add cfg.MODEL.AIG: ConvNet-AIG backbone (build_aig_resnet_backbone)."""
    cfg.MODEL.AIG = CN()
    cfg.MODEL.AIG.STAGES = ["res2", "res3", "res4"]  # stages whose units may be gated; others always run
    cfg.MODEL.AIG.TARGET_RATE = 0.6  # t: target execution rate of a gated unit (and the t of SCHEDULE)
    cfg.MODEL.AIG.SCHEDULE = ""  # "": every unit of STAGES has rate t; "resnet50"/"resnet101": the seed's schedule
    cfg.MODEL.AIG.TARGET_RATES = []  # explicit rates, one per unit of STAGES in order (overrides the two above); 1 = always run
    cfg.MODEL.AIG.LOSS_WEIGHT = 1.0  # weight of loss_target_rate = w * mean_units (t_u - batch mean gate_u)^2
    cfg.MODEL.AIG.GATE_HIDDEN = 16  # width of the gate's hidden 1x1 conv
    cfg.MODEL.AIG.GATE_NORM = "BN"  # norm of the hidden gate layer: BN (original), SyncBN, FrozenBN, LN, "" (none)
    cfg.MODEL.AIG.GATE_BIAS_INIT = [0.1, 2.0]  # initial bias of the [off, on] gate logits (~87 % open)
    cfg.MODEL.AIG.TEMPERATURE = 1.0  # Gumbel-softmax temperature in training
    cfg.MODEL.AIG.TEST_GATES = "threshold"  # evaluation gates: "threshold" (deterministic) or "sample" (original)


def add_blockdrop_config(cfg: CN) -> None:
    """Add cfg.MODEL.BLOCKDROP: BlockDrop backbone (build_blockdrop_resnet_backbone) + BlockDropRCNN training."""
    cfg.MODEL.BLOCKDROP = CN()
    cfg.MODEL.BLOCKDROP.STAGES = ["res2", "res3", "res4"]  # stages whose units the policy chooses; others always run
    cfg.MODEL.BLOCKDROP.PHASE = "finetune"  # "curriculum" (policy only, detector frozen) or "finetune" (joint)
    cfg.MODEL.BLOCKDROP.CURRICULUM_PERIOD = 100  # curriculum: iterations per extra unit left to the policy (last units first)
    cfg.MODEL.BLOCKDROP.ALPHA = 0.8  # probability bound: sample from alpha * p + (1 - alpha) * (1 - p)
    cfg.MODEL.BLOCKDROP.PENALTY = -5.0  # reward of an incorrect image (original: -1 curriculum, -5 / -10 finetune)
    cfg.MODEL.BLOCKDROP.ENTROPY_WEIGHT = 0.0  # entropy bonus (original: 0.1 in the curriculum, 0 when finetuning)
    cfg.MODEL.BLOCKDROP.POLICY_LOSS_WEIGHT = 1.0  # multiplies the REINFORCE loss (loss_policy)
    cfg.MODEL.BLOCKDROP.CORRECT_TOLERANCE = 0.1  # detection: correct iff loss(policy) <= (1 + this) * loss(all units)
    cfg.MODEL.BLOCKDROP.POLICY_INPUT_SIZE = 112  # policy sees the image resized to this square size
    cfg.MODEL.BLOCKDROP.POLICY_ARCH = "imagenet"  # policy ResNet: "imagenet" (7x7 stem, 4 stages) or "cifar" (3 stages)
    cfg.MODEL.BLOCKDROP.POLICY_NORM = "BN"  # norm of the policy ResNet: BN, SyncBN, FrozenBN, GN, "" (none)
    cfg.MODEL.BLOCKDROP.POLICY_BIAS_INIT = 0.0  # initial bias of the per-unit logits (0: p = 0.5)
