"""Layers of the original SACT TensorFlow networks that PyTorch lacks: TF 'SAME' padding.

TF 'SAME' gives ``ceil(n / stride)`` outputs and pads ``max((out - 1) * stride + k - n, 0)`` in
total, ``total // 2`` before and the rest after: for a stride-2 3x3 window on an even size that is
0 before and 1 after (PyTorch's symmetric ``padding=1`` shifts the grid by one pixel there).
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm
from torch import nn

from ..halting.branches import set_norm_stats

__all__ = ["tf_same_pad", "tf_same_out", "TFSameConv2d", "TFSameMaxPool2d", "original_norm", "lrelu",
           "LEAKINESS"]

HW = Tuple[int, int]
LEAKINESS = 0.1  # the original CIFAR code's lrelu: max(x, 0.1 x)


def tf_same_out(n: int, stride: int) -> int:
    """Output size of a TF 'SAME' conv / pool: ceil(n / stride)."""
    return -(-int(n) // int(stride))


def tf_same_pad(n: int, kernel: int, stride: int) -> Tuple[int, int]:
    """(before, after) padding of TF 'SAME' along one axis of size ``n``."""
    total = max((tf_same_out(n, stride) - 1) * stride + kernel - n, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: Tuple[int, int], stride: Tuple[int, int], value: float = 0.0) -> torch.Tensor:
    top, bottom = tf_same_pad(x.shape[-2], kernel[0], stride[0])
    left, right = tf_same_pad(x.shape[-1], kernel[1], stride[1])
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class TFSameConv2d(Conv2d):
    """detectron2 Conv2d (optional ``norm`` / ``activation``) with TF 'SAME' zero padding.

    (B,Cin,H,W) -> (B,Cout,ceil(H/s),ceil(W/s)); ``padding`` must stay 0 (the padding is dynamic).
    ``tf_same = True`` tells :func:`sact_det.modeling.sact.flops.conv_out_hw` the output size.
    """

    tf_same = True

    def __init__(self, *args, **kwargs) -> None:
        if kwargs.get("padding", 0) not in (0, (0, 0)):
            raise ValueError("TFSameConv2d computes its own padding; do not pass padding")
        super().__init__(*args, **kwargs)
        if self.dilation != (1, 1):
            raise ValueError("TFSameConv2d supports dilation 1 only")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_pad_same(x, self.kernel_size, self.stride))


class TFSameMaxPool2d(nn.Module):
    """Max pool with TF 'SAME' padding; the padding never wins (-inf). (B,C,H,W) -> (B,C,ceil(H/s),ceil(W/s))."""

    def __init__(self, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel_size, self.stride = int(kernel_size), int(stride)

    def out_hw(self, hw: HW) -> HW:
        return tf_same_out(hw[0], self.stride), tf_same_out(hw[1], self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = (self.kernel_size,) * 2, (self.stride,) * 2
        return F.max_pool2d(_pad_same(x, k, s, value=-math.inf), k, s)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=TF-SAME"


def original_norm(norm: str, channels: int, eps: float, momentum: Optional[float]) -> nn.Module:
    """A norm layer of the original networks: BN with TF's epsilon and momentum = 1 - TF decay."""
    if not norm:
        raise ValueError("the original SACT networks need a norm (cfg.MODEL.RESNETS.NORM BN / FrozenBN / SyncBN)")
    return set_norm_stats(get_norm(norm, channels), eps, momentum)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """The original CIFAR code's activation max(x, 0.1 x)."""
    return F.leaky_relu(x, LEAKINESS)
