"""Fold the (frozen / eval-mode) BatchNorm of a detectron2 residual unit into its convolutions.

The folded unit is what both inference paths run: ``dense_folded_forward`` (the fair dense
baseline, ``F.conv2d`` on the whole map) and the gather -> GEMM -> scatter kernels of
:mod:`sact_det.modeling.sparse`. Folding is exact up to fp32 round-off:
``BN(conv(x)) = conv(x) * s + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)``.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

__all__ = ["FoldedConv", "FoldedUnit", "fold_conv", "fold_unit", "dense_folded_forward",
           "FoldedDenseConv", "FoldedBlock", "folded_weight_bias", "fold_dense_conv", "fold_block",
           "folded_block_forward"]


@dataclass
class FoldedConv:
    """One convolution with its normalization folded in.

    ``mat``: the GEMM layout (C_out, k*k*C_in/groups), ordered (ky, kx, c_in) so that it multiplies
    channel-last im2col rows; ``bias``: (C_out,). :attr:`weight` is the (C_out, C_in/groups, k, k)
    layout for ``F.conv2d``: a view of ``mat`` for 1x1 convs, built on first use for kxk ones (so
    a cached fold that never runs densely holds one copy of the weights).
    """

    mat: torch.Tensor
    bias: torch.Tensor
    kernel_size: int
    padding: int
    dilation: int
    groups: int
    _dense: Optional[torch.Tensor] = None

    @property
    def weight(self) -> torch.Tensor:
        k = self.kernel_size
        if k == 1:
            return self.mat.view(self.mat.shape[0], -1, 1, 1)
        if self._dense is None:
            self._dense = self.mat.view(self.mat.shape[0], k, k, -1).permute(0, 3, 1, 2).contiguous()
        return self._dense


@dataclass
class FoldedUnit:
    """A residual unit with identity shortcut and stride 1, BN folded (eval only).

    kind: "bottleneck" (convs = [1x1, 3x3, 1x1]) or "basic" (convs = [3x3, 3x3]).
    Output: relu(convs[-1](... relu(convs[0](x))) + x).
    """

    kind: str
    convs: List[FoldedConv]
    channels: int
    _casts: Dict[torch.dtype, "FoldedUnit"] = field(default_factory=dict, repr=False, compare=False)

    def to_dtype(self, dtype: torch.dtype) -> "FoldedUnit":
        """This unit with weights and biases in ``dtype`` (``self`` if already there), cached per dtype.

        The gather kernels multiply with ``out=`` buffers, which autocast leaves alone: under
        ``torch.autocast`` they run in the activations' dtype (bf16 / fp16) with the fp32 fold
        rounded to it, as autocast rounds the weights of a dense conv.
        """
        if self.convs[0].mat.dtype == dtype:
            return self
        hit = self._casts.get(dtype)
        if hit is None:
            convs = [FoldedConv(c.mat.to(dtype), c.bias.to(dtype), c.kernel_size, c.padding, c.dilation, c.groups)
                     for c in self.convs]
            hit = self._casts[dtype] = FoldedUnit(self.kind, convs, self.channels)
        return hit


def _norm_scale_shift(norm: Optional[nn.Module], c_out: int, where: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) of an inference-mode norm layer (identity when ``norm`` is None)."""
    if norm is None:
        return torch.ones(c_out), torch.zeros(c_out)
    if isinstance(norm, FrozenBatchNorm2d):
        mean, var, gamma, beta, eps = norm.running_mean, norm.running_var, norm.weight, norm.bias, norm.eps
    elif isinstance(norm, nn.modules.batchnorm._BatchNorm):
        if norm.training and norm.track_running_stats:
            raise ValueError(f"fold_unit: {where}.norm ({type(norm).__name__}) is in training mode; "
                             "sparse execution is inference-only, call model.eval() first")
        if norm.running_mean is None:
            raise ValueError(f"fold_unit: {where}.norm has no running statistics (track_running_stats=False)")
        mean, var, eps = norm.running_mean, norm.running_var, norm.eps
        gamma = norm.weight if norm.weight is not None else torch.ones_like(mean)
        beta = norm.bias if norm.bias is not None else torch.zeros_like(mean)
    else:
        raise ValueError(f"fold_unit: cannot fold {where}.norm of type {type(norm).__name__}; "
                         "sparse execution supports FrozenBN / BN / SyncBN (cfg.MODEL.RESNETS.NORM)")
    scale = gamma.detach() * torch.rsqrt(var.detach() + eps)
    return scale, beta.detach() - mean.detach() * scale


def folded_weight_bias(conv: nn.Conv2d, where: str, what: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight * s, shift): conv.norm (detectron2 ``Conv2d``) folded into a copy of weight and bias."""
    if getattr(conv, "activation", None) is not None:
        raise ValueError(f"{what}: {where} has a fused activation, which detectron2 ResNet units do not use")
    w = conv.weight.detach()
    scale, shift = _norm_scale_shift(getattr(conv, "norm", None), w.shape[0], where)
    scale, shift = scale.to(w), shift.to(w)
    if conv.bias is not None:
        shift = shift + conv.bias.detach() * scale
    return w * scale.view(-1, 1, 1, 1), shift.contiguous()


def fold_conv(conv: nn.Conv2d, where: str = "conv") -> FoldedConv:
    """Fold ``conv.norm`` (detectron2 ``Conv2d``) into weight and bias; see :class:`FoldedConv`."""
    k = conv.kernel_size
    if k[0] != k[1] or conv.stride != (1, 1) or conv.padding[0] != conv.dilation[0] * (k[0] // 2) \
            or conv.padding != (conv.padding[0],) * 2 or conv.dilation != (conv.dilation[0],) * 2:
        raise ValueError(f"fold_unit: {where} must be a square, stride-1, 'same'-padded conv; got kernel "
                         f"{k}, stride {conv.stride}, padding {conv.padding}, dilation {conv.dilation}")
    w, shift = folded_weight_bias(conv, where, "fold_unit")
    mat = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous()
    return FoldedConv(mat, shift, k[0], conv.padding[0], conv.dilation[0], conv.groups)


def fold_unit(block: nn.Module) -> FoldedUnit:
    """Fold a detectron2 ``BottleneckBlock`` / ``BasicBlock`` (identity shortcut, stride 1) for inference."""
    name = type(block).__name__
    if not isinstance(block, (BottleneckBlock, BasicBlock)):
        raise TypeError(f"fold_unit: expected detectron2 BottleneckBlock or BasicBlock, got {name}")
    if block.shortcut is not None or block.stride != 1:
        raise ValueError(f"fold_unit: {name} has a projection shortcut or stride {block.stride}; only units "
                         "l >= 1 of a stage (identity shortcut, stride 1) can run sparsely")
    if isinstance(block, BottleneckBlock):
        kind, names = "bottleneck", ("conv1", "conv2", "conv3")
        if block.conv1.kernel_size != (1, 1) or block.conv3.kernel_size != (1, 1):
            raise ValueError(f"fold_unit: unexpected BottleneckBlock layout {block}")
    else:
        kind, names = "basic", ("conv1", "conv2")
        if block.conv1.groups != 1 or block.conv1.dilation != (1, 1):
            raise ValueError(f"fold_unit: unexpected BasicBlock layout {block}")
    convs = [fold_conv(getattr(block, n), where=n) for n in names]
    if convs[0].groups != 1 or convs[-1].groups != 1:
        raise ValueError(f"fold_unit: only the middle 3x3 conv of a bottleneck may be grouped ({name})")
    return FoldedUnit(kind, convs, int(convs[-1].mat.shape[0]))


def _conv(c: FoldedConv, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, c.weight, c.bias, 1, c.padding, c.dilation, c.groups)


def dense_folded_forward(folded: FoldedUnit, x: torch.Tensor) -> torch.Tensor:
    """The unit at every position with BN folded: x (B,C,H,W) -> (B,C,H,W). The fair dense baseline."""
    h = x
    for c in folded.convs[:-1]:
        h = _conv(c, h).relu_()
    h = _conv(folded.convs[-1], h)
    return h.add_(x).relu_()


@dataclass
class FoldedDenseConv:
    """Any detectron2 ``Conv2d`` with its norm folded: ``F.conv2d`` arguments. weight (C_out, C_in/g, k, k)."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    groups: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


@dataclass
class FoldedBlock:
    """A stem or residual unit of any stride / shortcut with BN folded (runs densely, eval only).

    kind: "stem" (conv1 -> relu -> 3x3/2 max pool), "bottleneck" or "basic"; shortcut: the
    projection conv, or None for identity.
    """

    kind: str
    convs: List[FoldedDenseConv]
    shortcut: Optional[FoldedDenseConv]


def fold_dense_conv(conv: nn.Conv2d, where: str = "conv") -> FoldedDenseConv:
    """Fold ``conv.norm`` into a copy of the weights; keeps stride / padding / dilation / groups."""
    w, shift = folded_weight_bias(conv, where, "fold_block")
    return FoldedDenseConv(w.contiguous(), shift, conv.stride, conv.padding, conv.dilation, conv.groups)


def fold_block(block: nn.Module) -> FoldedBlock:
    """Fold a detectron2 ``BasicStem`` / ``BottleneckBlock`` / ``BasicBlock`` (any stride, any shortcut)."""
    from detectron2.modeling.backbone.resnet import BasicStem

    if isinstance(block, BasicStem):
        return FoldedBlock("stem", [fold_dense_conv(block.conv1, "stem.conv1")], None)
    if isinstance(block, BottleneckBlock):
        kind, names = "bottleneck", ("conv1", "conv2", "conv3")
    elif isinstance(block, BasicBlock):
        kind, names = "basic", ("conv1", "conv2")
    else:
        raise TypeError(f"fold_block: expected a detectron2 BasicStem / BottleneckBlock / BasicBlock, "
                        f"got {type(block).__name__}")
    shortcut = None if block.shortcut is None else fold_dense_conv(block.shortcut, "shortcut")
    return FoldedBlock(kind, [fold_dense_conv(getattr(block, n), n) for n in names], shortcut)


def folded_block_forward(fb: FoldedBlock, x: torch.Tensor) -> torch.Tensor:
    """What the unfolded stem / unit computes (up to fp32 round-off): x (B,C,H,W) -> (B,C',H',W')."""
    if fb.kind == "stem":
        return F.max_pool2d(fb.convs[0](x).relu_(), kernel_size=3, stride=2, padding=1)
    h = x
    for c in fb.convs[:-1]:
        h = c(h).relu_()
    h = fb.convs[-1](h)
    return h.add_(x if fb.shortcut is None else fb.shortcut(x)).relu_()
