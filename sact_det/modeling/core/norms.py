"""Inference-mode BatchNorm as a per-channel affine map (imports no family)."""
from typing import Optional, Tuple

import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

__all__ = ["inference_affine"]


def inference_affine(norm: nn.Module) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(scale, shift), each (C,), with ``norm(x) = scale * x + shift`` per channel for FrozenBN and for a
    BatchNorm in eval mode with running statistics: ``scale = gamma / sqrt(var + eps)``,
    ``shift = beta - mean * scale``; None for any other norm (or a BatchNorm in training mode)."""
    frozen = isinstance(norm, FrozenBatchNorm2d)
    if not frozen and not (isinstance(norm, nn.modules.batchnorm._BatchNorm) and not norm.training
                           and norm.running_mean is not None):
        return None
    gamma = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
    beta = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
    scale = gamma * torch.rsqrt(norm.running_var + norm.eps)
    return scale, beta - norm.running_mean * scale
