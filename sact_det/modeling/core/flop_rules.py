"""Convolution FLOP rules shared by every backbone family (imports no family).

Convention (as the original SACT code counts): a conv costs 2 * out_positions * C_out * k*k * C_in / groups
(1 multiply-add = 2 FLOPs), a fully-connected layer 2 * in * out; BN, activations, pooling and biases are
free. A residual unit costs its main-path convs and its projection shortcut; a skipped unit (AIG /
BlockDrop) only its projection shortcut. Sizes follow conv arithmetic from the unpadded image size.
"""
from typing import List, Sequence, Tuple

import torch
from detectron2.modeling.backbone.resnet import BasicStem
from torch import nn

__all__ = ["HW", "conv_out_hw", "conv_flops", "linear_flops", "dilate", "stem_flops", "unit_convs", "unit_flops",
           "dense_resnet_flops", "HookFlopCounter"]

HW = Tuple[int, int]


def conv_out_hw(conv: nn.Conv2d, hw: HW) -> HW:
    """Output size of ``conv`` on an input of size ``hw`` (standard conv arithmetic; ceil(n / s) for
    convs with TF 'SAME' padding, marked ``tf_same``)."""
    out = []
    for i, n in enumerate(hw):
        k, s, p, d = conv.kernel_size[i], conv.stride[i], conv.padding[i], conv.dilation[i]
        out.append(-(-n // s) if getattr(conv, "tf_same", False) else (n + 2 * p - d * (k - 1) - 1) // s + 1)
    return out[0], out[1]


def conv_flops(conv: nn.Conv2d, positions: float) -> float:
    """FLOPs of ``conv`` evaluated at ``positions`` output positions."""
    k = conv.kernel_size[0] * conv.kernel_size[1]
    return 2.0 * float(positions) * conv.out_channels * k * conv.in_channels / conv.groups


def linear_flops(linear: nn.Linear) -> float:
    """FLOPs of one input vector through ``linear``."""
    return 2.0 * linear.in_features * linear.out_features


def dilate(mask: torch.Tensor, d: int = 1) -> torch.Tensor:
    """3x3 dilation at dilation ``d`` of a bool mask (..., H, W) -> same shape: the positions with an active
    one among their 3x3 neighbours, i.e. where a 3x3 conv (dilation ``d``) must run so that its output
    is exact on ``mask``."""
    h, w = mask.shape[-2:]
    p = mask.new_zeros(*mask.shape[:-2], h + 2 * d, w + 2 * d)
    p[..., d: d + h, d: d + w] = mask
    r = p[..., :, :w] | p[..., :, d: d + w] | p[..., :, 2 * d: 2 * d + w]
    return r[..., :h, :] | r[..., d: d + h, :] | r[..., 2 * d: 2 * d + h, :]


def stem_flops(stem: nn.Module, hw: HW) -> Tuple[float, HW]:
    """FLOPs of the stem conv ``stem.conv1`` on an image of ``hw`` and the stem's output size.

    Pooling is free: detectron2's BasicStem ends in a 3x3/2 max pool with pad 1, the original v2
    stem in a TF 'SAME' 3x3/2 max pool (``stem.pool.out_hw``: ceil(n/2)); CIFAR stems have none.
    """
    hw = conv_out_hw(stem.conv1, hw)
    flops = conv_flops(stem.conv1, hw[0] * hw[1])
    if isinstance(stem, BasicStem):
        hw = ((hw[0] - 1) // 2 + 1, (hw[1] - 1) // 2 + 1)
    elif hasattr(getattr(stem, "pool", None), "out_hw"):
        hw = stem.pool.out_hw(hw)
    elif getattr(stem, "stride", None) != stem.conv1.stride[0]:  # a stem without pooling is its conv
        raise TypeError(f"no FLOP rule for stem {type(stem).__name__}")
    return flops, hw


def unit_convs(block: nn.Module) -> List[nn.Conv2d]:
    """The main-path convs (conv1, conv2[, conv3]) of a residual unit, in execution order."""
    return [getattr(block, n) for n in ("conv1", "conv2", "conv3") if hasattr(block, n)]


def unit_flops(block: nn.Module, hw: HW, executed: bool = True) -> Tuple[float, HW]:
    """FLOPs of one residual unit on an input of ``hw`` and its output size; a skipped unit
    (``executed`` False) costs its projection shortcut only."""
    flops, cur = 0.0, hw
    for conv in unit_convs(block):
        cur = conv_out_hw(conv, cur)
        if executed:
            flops += conv_flops(conv, cur[0] * cur[1])
    if getattr(block, "shortcut", None) is not None:
        flops += conv_flops(block.shortcut, cur[0] * cur[1])
    return flops, cur


def dense_resnet_flops(resnet: nn.Module, hw: Sequence[int]) -> Tuple[float, HW]:
    """FLOPs of stem + every unit of a (detectron2-style) ResNet on one image of ``hw``, every unit
    executed; returns (flops, output size of the last stage)."""
    flops, cur = stem_flops(resnet.stem, (int(hw[0]), int(hw[1])))
    for stage in resnet.stages:
        for block in stage:
            f, cur = unit_flops(block, cur)
            flops += f
    return flops, cur


class HookFlopCounter:
    """Dense FLOPs of every nn.Conv2d / nn.Linear inside ``modules`` while the context is open.

    Counts from the actual output shapes (whole batch): conv 2 * out.numel() * k*k * C_in / groups,
    linear 2 * out.numel() * in_features.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = [m for m in modules if m is not None]
        self.total = 0.0
        self._handles: list = []

    def _hook(self, module: nn.Module, inputs, output) -> None:
        if not isinstance(output, torch.Tensor):
            return
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            self.total += 2.0 * output.numel() * k * module.in_channels / module.groups
        elif isinstance(module, nn.Linear):
            self.total += 2.0 * output.numel() * module.in_features

    def __enter__(self) -> "HookFlopCounter":
        for root in self.modules:
            for m in root.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    self._handles.append(m.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
