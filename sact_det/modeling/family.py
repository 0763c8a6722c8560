"""ConvNet-AIG and BlockDrop classifiers: the seams the classification tool calls.

The classifier is SACTClassifier(backbone, num_classes) with the backbone an AIGResNet or a
BlockDropResNet built from the tool's own stem + stages (CIFAR ResNet-110, ImageNet ResNet-50/101)
when cfg.MODEL.BACKBONE.NAME names one of the two families. Training adds
``family_classification_losses``: ConvNet-AIG's target-rate loss, or BlockDrop's REINFORCE loss
with the original's definition of correct (argmax == label) against the greedy policy's prediction.
"""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .aig import AIGResNet, aig_from_parts
from .blockdrop import BlockDropResNet, blockdrop_from_parts, blockdrop_reward, bounded_probs, reinforce_loss
from .gates import UnitSkippingResNet

__all__ = ["FAMILY_BACKBONES", "is_family_cfg", "build_family_backbone", "prepare_family_classifier",
           "family_classification_losses"]

FAMILY_BACKBONES = {"build_aig_resnet_backbone": aig_from_parts, "build_blockdrop_resnet_backbone": blockdrop_from_parts}


def is_family_cfg(cfg) -> bool:
    """True when cfg.MODEL.BACKBONE.NAME selects ConvNet-AIG or BlockDrop."""
    return cfg.MODEL.BACKBONE.NAME in FAMILY_BACKBONES


def build_family_backbone(cfg, stem: nn.Module, stages: List[List[nn.Module]], out_features: List[str],
                          freeze_at: int) -> UnitSkippingResNet:
    """AIGResNet / BlockDropResNet (per cfg.MODEL.BACKBONE.NAME) around the given stem and stages."""
    if not is_family_cfg(cfg):
        raise ValueError(f"cfg.MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME!r} is neither of {sorted(FAMILY_BACKBONES)}")
    return FAMILY_BACKBONES[cfg.MODEL.BACKBONE.NAME](cfg, stem, stages, out_features, freeze_at)


def prepare_family_classifier(model: nn.Module) -> None:
    """BlockDrop curriculum: the classifier's fc stays fixed with the ResNet (only the policy learns)."""
    bb = model.backbone
    if isinstance(bb, BlockDropResNet) and bb.phase == "curriculum":
        for p in model.linear.parameters():
            p.requires_grad = False


def _blockdrop_losses(model: nn.Module, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                      penalty: float, entropy_weight: float, weight: float) -> Dict[str, torch.Tensor]:
    bb: BlockDropResNet = model.backbone
    probs, sample = bb.last_probs, bb.last_actions
    if probs is None or sample is None:
        raise RuntimeError("family_classification_losses: run the classifier's training forward first")
    unused = bb.zero_unused_loss()  # before the greedy pass below replaces the record
    learn = bb.learnable_units()
    greedy = (probs.detach() >= 0.5) | (~learn)[None, :]
    with torch.no_grad():  # the self-critical baseline (not through DDP: no gradients)
        feats = bb.forward_with_policy(images, greedy)[model.head_feature]
        greedy_logits = model.linear(F.adaptive_avg_pool2d(feats, 1).flatten(1))
    r_sample = blockdrop_reward(sample, logits.detach().argmax(1) == labels, penalty)
    r_greedy = blockdrop_reward(greedy, greedy_logits.argmax(1) == labels, penalty)
    loss = reinforce_loss(bounded_probs(probs, bb.alpha), sample, r_sample - r_greedy, mask=learn,
                          entropy_weight=entropy_weight)
    out = {"loss_policy": weight * loss + unused}
    if bb.phase == "curriculum":  # the classifier is fixed: its loss is reported, not trained
        out["loss_cls"] = F.cross_entropy(logits.detach(), labels)
    return out


def family_classification_losses(model: nn.Module, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                                 cfg, iteration: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Extra training losses of a ConvNet-AIG / BlockDrop classifier after ``logits = ddp(images)``.

    AIG: {"loss_target_rate"}; BlockDrop: {"loss_policy"} (+ "loss_cls" replaced by a detached value
    in the curriculum). ``iteration`` drives BlockDrop's curriculum from the next forward on.
    """
    model = getattr(model, "module", model)
    bb = model.backbone
    if isinstance(bb, AIGResNet):
        return bb.extra_losses()
    if isinstance(bb, BlockDropResNet):
        b = cfg.MODEL.BLOCKDROP
        out = _blockdrop_losses(model, images, logits, labels, float(b.PENALTY), float(b.ENTROPY_WEIGHT),
                                float(b.POLICY_LOSS_WEIGHT))
        if iteration is not None:
            bb.iteration = int(iteration) + 1
        return out
    return {}
