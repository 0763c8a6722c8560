"""Halting calibration of a SACT backbone: set the halting biases so the model runs a given FLOPs fraction.

For benchmarks and ablations of sparse execution without a trained model: :func:`randomize_halting`
gives every spatial halting branch random 3x3 weights (spatially varying masks), then
:func:`calibrate_halting` bisects one offset added to every halting bias until the mean FLOPs
fraction (extractor FLOPs from the masks the model used / its dense FLOPs, :mod:`.flops`) on the
calibration images reaches the target. Works on trained models too (their biases are shifted).
"""
import statistics
import warnings
from typing import List, Optional, Sequence

import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from ..halting.branches import SpatialHalting
from .backbone import SACTResNet
from .flops import backbone_flops

__all__ = ["randomize_halting", "flops_fraction", "calibrate_halting"]


def _heads(backbone: SACTResNet) -> List[SpatialHalting]:
    heads = [m for m in backbone.modules() if isinstance(m, SpatialHalting)]
    if not heads:
        raise ValueError("no SpatialHalting branch in the backbone (needs cfg.MODEL.SACT.MODE sact)")
    return heads


def randomize_halting(backbone: SACTResNet, gain: float = 3.0, seed: int = 0, bias: float = 0.0,
                      images: Optional[Sequence[torch.Tensor]] = None) -> None:
    """Random local halting convs (logit std ~ ``gain`` for unit-variance inputs), no global term, bias ``bias``.

    A halting norm with fixed statistics (BN / FrozenBN) does not make its input unit-variance by itself: with
    ``images`` ((1,3,H,W) each) its running mean / variance are set to the per-channel statistics of its input
    on them (one forward each, dense execution, every unit running at every position), so that the logits have
    the scale ``gain`` assumes (up to the change of the masks that calibration brings). GroupNorm needs
    nothing; without ``images`` the statistics are kept.
    """
    g = torch.Generator().manual_seed(seed)
    heads = _heads(backbone)
    with torch.no_grad():
        for hd in heads:
            w = hd.local_conv.weight
            w.copy_(torch.randn(w.shape, generator=g) * gain / w[0].numel() ** 0.5)
            hd.local_conv.bias.fill_(bias)
            hd.global_conv.weight.zero_()
    fixed = [hd for hd in heads if isinstance(hd.local_norm, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    if images is not None and fixed:
        _set_input_statistics(backbone, heads, fixed, images)


@torch.no_grad()
def _set_input_statistics(backbone: SACTResNet, heads: List[SpatialHalting], fixed: List[SpatialHalting],
                          images: Sequence[torch.Tensor]) -> None:
    """running_mean / running_var of the BN / FrozenBN local norm of each of ``fixed`` := per-channel mean /
    variance of its (B,C,H,W) input over ``images``; one forward each with the backbone in eval mode, dense
    execution and no position halting before the last unit (every branch of ``heads``; all restored)."""
    sums = {id(hd): [0.0, 0.0, 0] for hd in fixed}

    def record(head: nn.Module, inputs) -> None:  # the branch's input is its local norm's input
        x = inputs[0].detach().double()
        acc = sums[id(head)]
        acc[0] = acc[0] + x.sum((0, 2, 3))
        acc[1] = acc[1] + (x * x).sum((0, 2, 3))
        acc[2] += x.numel() // x.shape[1]

    stages = [getattr(backbone, n) for n in backbone.adaptive_stages]
    saved = [(st.execution, st.sparse_max_density) for st in stages]
    was_training = backbone.training
    hooks = [hd.register_forward_pre_hook(record) for hd in fixed]
    biases = [hd.local_conv.bias.clone() for hd in heads]
    try:
        backbone.eval()
        backbone.set_execution("dense")
        for hd in heads:
            hd.local_conv.bias.fill_(-1e4)  # scores 0: every unit runs everywhere, every branch sees a whole map
        for img in images:
            backbone(img if img.dim() == 4 else img[None])
    finally:
        for h in hooks:
            h.remove()
        for hd, b in zip(heads, biases):
            hd.local_conv.bias.copy_(b)
        for st, (execution, density) in zip(stages, saved):
            st.execution, st.sparse_max_density = execution, density
        backbone.train(was_training)
    for hd in fixed:
        s1, s2, n = sums[id(hd)]
        mean = s1 / n
        hd.local_norm.running_mean.copy_(mean)
        hd.local_norm.running_var.copy_((s2 / n - mean * mean).clamp_min(0))


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
                      steps: int = 14, span: float = 10.0, tolerance: float = 0.05) -> float:
    """Bisect one offset in [-span, span] added to every halting bias so that :func:`flops_fraction` on
    ``images`` is ``target`` (in (0, 1]); leaves the shifted biases in place and returns the offset.

    The fraction is a step function of the offset (masks change at discrete positions), so the
    result is as close as those steps allow; evaluated in eval mode (the mode is restored after). Warns
    when the fraction reached is more than ``tolerance`` off the target (no offset in the span gets there).
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
        offset = (lo + hi) / 2
        set_offset(offset)
        reached = flops_fraction(backbone, images)
    finally:
        backbone.train(was_training)
    if abs(reached - target) > tolerance:
        warnings.warn(f"calibrate_halting: reached {reached:.3f} of the dense FLOPs, not {target:.3f}, at offset "
                      f"{offset:+.2f} (span +-{span}): the halting logits are out of scale (a BN / FrozenBN halting "
                      "norm with statistics that do not fit the maps: randomize_halting(..., images=...) sets them)",
                      stacklevel=2)
    return offset
