"""Halting calibration of a SACT backbone: set the halting biases so the model runs a given FLOPs fraction.

For benchmarks and ablations of sparse execution without a trained model: :func:`randomize_halting`
gives every spatial halting branch random 3x3 weights (spatially varying masks), then
:func:`calibrate_halting` bisects one offset added to every halting bias until the mean FLOPs
fraction (extractor FLOPs from the masks the model used / its dense FLOPs, :mod:`.flops`) on the
calibration images reaches the target. Works on trained models too (their biases are shifted).
"""
import statistics
from typing import List, Sequence

import torch

from ..halting.branches import SpatialHalting
from .backbone import SACTResNet
from .flops import backbone_flops

__all__ = ["randomize_halting", "flops_fraction", "calibrate_halting"]


def _heads(backbone: SACTResNet) -> List[SpatialHalting]:
    heads = [m for m in backbone.modules() if isinstance(m, SpatialHalting)]
    if not heads:
        raise ValueError("no SpatialHalting branch in the backbone (needs cfg.MODEL.SACT.MODE sact)")
    return heads


def randomize_halting(backbone: SACTResNet, gain: float = 3.0, seed: int = 0, bias: float = 0.0) -> None:
    """Random local halting convs (logit std ~ ``gain`` for unit-variance inputs), no global term, bias ``bias``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for hd in _heads(backbone):
            w = hd.local_conv.weight
            w.copy_(torch.randn(w.shape, generator=g) * gain / w[0].numel() ** 0.5)
            hd.local_conv.bias.fill_(bias)
            hd.global_conv.weight.zero_()


@torch.no_grad()
def flops_fraction(backbone: SACTResNet, images: Sequence[torch.Tensor]) -> float:
    """Mean over ``images`` ((1,3,H,W) or (3,H,W) each) of the extractor's FLOPs / its dense FLOPs."""
    fractions = []
    for img in images:
        img = img if img.dim() == 4 else img[None]
        if img.shape[0] != 1:
            raise ValueError(f"flops_fraction: one image per tensor, got {tuple(img.shape)}")
        hw = tuple(img.shape[-2:])
        backbone(img)
        fractions.append(backbone.image_flops(0) / backbone_flops(backbone, hw, ponder={}))
    return statistics.mean(fractions)


def calibrate_halting(backbone: SACTResNet, images: Sequence[torch.Tensor], target: float,
                      steps: int = 14, span: float = 10.0) -> float:
    """Bisect one offset in [-span, span] added to every halting bias so that :func:`flops_fraction` on
    ``images`` is ``target`` (in (0, 1]); leaves the shifted biases in place and returns the offset.

    The fraction is a step function of the offset (masks change at discrete positions), so the
    result is as close as those steps allow; evaluated in eval mode (the mode is restored after).
    """
    if not 0 < target <= 1:
        raise ValueError(f"calibrate_halting: target FLOPs fraction must be in (0, 1], got {target}")
    heads = _heads(backbone)
    base = [hd.local_conv.bias.detach().clone() for hd in heads]
    was_training = backbone.training
    backbone.eval()

    def set_offset(offset: float) -> None:
        with torch.no_grad():
            for hd, b in zip(heads, base):
                hd.local_conv.bias.copy_(b + offset)

    lo, hi = -span, span
    try:
        for _ in range(steps):
            set_offset((lo + hi) / 2)
            if flops_fraction(backbone, images) > target:
                lo = (lo + hi) / 2  # too many FLOPs: halt earlier
            else:
                hi = (lo + hi) / 2
        set_offset((lo + hi) / 2)
    finally:
        backbone.train(was_training)
    return (lo + hi) / 2
