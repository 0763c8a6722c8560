"""Training losses of the classifier: cross-entropy + the backbone's own losses (contract), and
BlockDrop's REINFORCE loss, the one family specialisation (it needs the task outcome).

BlockDrop (as the original cl_training.py / finetune.py): "correct" is argmax == label; the
self-critical baseline is the greedy policy (p >= 0.5, the units the curriculum keeps forced on);
in the curriculum the ResNet and the fc are fixed, so the cross-entropy is only reported.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.skipping.blockdrop import blockdrop_reward, bounded_probs, reinforce_loss
from ..modeling.meta_arch.classifier import AdaptiveClassifier

__all__ = ["classification_losses", "blockdrop_classifier_losses", "prepare_classifier_training"]


def _unwrap(model: nn.Module) -> AdaptiveClassifier:
    return getattr(model, "module", model)  # DDP


def prepare_classifier_training(model: nn.Module) -> None:
    """BlockDrop curriculum: the fc stays fixed with the ResNet (only the policy learns)."""
    model = _unwrap(model)
    if model.family == "blockdrop" and model.backbone.phase == "curriculum":
        for p in model.linear.parameters():
            p.requires_grad = False


def blockdrop_classifier_losses(model: nn.Module, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                                penalty: float, entropy_weight: float, weight: float) -> Dict[str, torch.Tensor]:
    """{"loss_policy"} (+ "loss_cls" detached in the curriculum) after ``logits = model(images)`` in training.

    images (B,3,H,W), logits (B,K) of the sampled policy, labels (B,).
    """
    model = _unwrap(model)
    bb = model.backbone
    probs, sample = bb.last_probs, bb.last_actions
    if probs is None or sample is None:
        raise RuntimeError("blockdrop_classifier_losses: run the classifier's training forward first")
    unused = bb.zero_unused_loss()  # before the greedy pass below replaces the record
    learn = bb.learnable_units()
    greedy = (probs.detach() >= 0.5) | (~learn)[None, :]
    with torch.no_grad():  # the self-critical baseline (not through DDP: no gradients)
        greedy_logits = model.head_logits(bb.forward_with_policy(images, greedy))
    r_sample = blockdrop_reward(sample, logits.detach().argmax(1) == labels, penalty)
    r_greedy = blockdrop_reward(greedy, greedy_logits.argmax(1) == labels, penalty)
    loss = reinforce_loss(bounded_probs(probs, bb.alpha), sample, r_sample - r_greedy, mask=learn,
                          entropy_weight=entropy_weight)
    out = {"loss_policy": weight * loss + unused}
    if bb.phase == "curriculum":  # the classifier is fixed: its loss is reported, not trained
        out["loss_cls"] = F.cross_entropy(logits.detach(), labels)
    return out


def classification_losses(model: nn.Module, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, cfg,
                          iteration: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Losses of one training step after ``logits = model(images)`` (model: the classifier or its DDP wrapper).

    {"loss_cls": cross-entropy (cfg.SACT_CLS.SOLVER.LABEL_SMOOTHING)} + the backbone's extra losses
    (SACT / ACT "loss_ponder", AIG "loss_target_rate") + BlockDrop's "loss_policy". ``iteration``
    drives BlockDrop's curriculum from the next forward on.
    """
    model = _unwrap(model)
    smoothing = float(cfg.SACT_CLS.SOLVER.LABEL_SMOOTHING)
    losses = {"loss_cls": F.cross_entropy(logits, labels, label_smoothing=smoothing)}
    losses.update(model.extra_losses())
    if model.family == "blockdrop":
        b = cfg.MODEL.BLOCKDROP
        losses.update(blockdrop_classifier_losses(model, images, logits, labels, float(b.PENALTY),
                                                  float(b.ENTROPY_WEIGHT), float(b.POLICY_LOSS_WEIGHT)))
        if iteration is not None:
            model.backbone.iteration = int(iteration) + 1
    return losses
