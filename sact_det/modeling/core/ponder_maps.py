"""The one summation of per-stage ponder maps (detector outputs, saliency evaluation, classifier maps)."""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["sum_ponder_maps"]


def sum_ponder_maps(maps: Sequence[torch.Tensor], size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Sum stage ponder maps (..., h_i, w_i) on one grid: (..., H, W) float32 on the CPU.

    The grid is ``size``, by default the largest map's (the finest stage). Interpolation is
    *nearest*: a stage position's ponder cost covers every grid position inside its cell (for the
    usual stride ratio 2^k each coarse value is replicated into a 2^k x 2^k block), so the sum keeps
    the stages' values (integers N + R stay within [sum of mins, sum of maxes]) and no value spills
    over halting boundaries as bilinear resampling would. Leading dimensions (a batch) are kept.
    """
    if not len(maps):
        raise ValueError("no stage ponder maps to sum (is the model a SACT/ACT model?)")
    maps = [torch.as_tensor(m).detach().float().cpu() for m in maps]
    target = tuple(int(s) for s in size) if size is not None else \
        max((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])
    total: Optional[torch.Tensor] = None
    for m in maps:
        if tuple(m.shape[-2:]) != target:
            lead = m.shape[:-2]
            m = F.interpolate(m.reshape(-1, 1, *m.shape[-2:]), size=target, mode="nearest").reshape(*lead, *target)
        total = m if total is None else total + m
    return total
