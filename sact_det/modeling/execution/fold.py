"""Fold the (frozen / eval-mode) BatchNorm of a detectron2 residual unit into its convolutions.

One folded form, :class:`FoldedUnit` of :class:`FoldedConv`: :func:`fold_block` folds any stem / unit
(any stride, projection shortcut), which ``dense_folded_forward`` runs with ``F.conv2d``;
:func:`fold_unit` folds a unit l >= 1 of a stage (identity shortcut, stride 1), which also runs
in the gather -> GEMM -> scatter kernels of :mod:`sact_det.modeling.execution.sparse`. :func:`fold_norms`
folds every norm of a whole detectron2 model (a dense baseline). Folding is exact up to fp32 round-off:
``BN(conv(x)) = conv(x) * s + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)``.
"""
import functools
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

from ..core.norms import inference_affine

__all__ = ["FoldedConv", "FoldedUnit", "fold_conv", "fold_unit", "fold_block", "dense_folded_forward",
           "folded_weight_bias", "fold_norms", "onednn_conv", "rows_linear", "folded_resnet_forward"]


def _use_onednn(x: torch.Tensor) -> bool:
    """Whether to call oneDNN directly (convolutions, the fused linear of :func:`rows_linear`): fp32 CPU tensors with
    oneDNN available. (For 1x1 convs on one thread ``F.conv2d`` picks a slower im2col-free GEMM path; oneDNN's
    kernels are 10-30 % faster here.) Not under CPU autocast: the direct call would bypass its casts
    (``F.conv2d`` / ``torch.addmm`` are cast)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available() \
        and torch.backends.mkldnn.enabled and not x.requires_grad and not torch.is_autocast_enabled("cpu")


def onednn_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int = 1,
                padding: int = 0, dilation: int = 1, groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` (square kernel, symmetric padding) through oneDNN for channels-last fp32 CPU inputs
    (output channels-last), else ``F.conv2d``: x (B,C_in,H,W) -> (B,C_out,H',W')."""
    if _use_onednn(x) and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.mkldnn_convolution(x, weight, bias, (padding,) * 2, (stride,) * 2, (dilation,) * 2, groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


@functools.lru_cache(maxsize=None)
def _onednn_linear() -> Optional[Callable[..., torch.Tensor]]:
    """oneDNN's fused linear (``torch.ops.mkldnn._linear_pointwise``: a @ W^T + b, then an optional ReLU in the
    same pass), or None if this torch build lacks it (looked up once)."""
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


def rows_linear(a: torch.Tensor, mat: torch.Tensor, bias: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """``a @ mat^T + bias`` (then ReLU if ``relu``): a (n,K) rows, mat (C_out,K) -> (n,C_out), a new tensor. On
    fp32 CPU oneDNN's fused linear (the ReLU in the GEMM's epilogue; 5-15 % faster than a 1x1 oneDNN
    convolution on the same rows plus a ReLU pass, and than ``torch.addmm``, for the sparse path's shapes);
    elsewhere (CUDA, bf16 / fp16, no oneDNN) ``torch.addmm``."""
    n, k = a.shape
    linear = _onednn_linear() if n and k and _use_onednn(a) and a.is_contiguous() and mat.is_contiguous() else None
    if linear is not None:
        return linear(a, mat, bias, "relu" if relu else "none", [], "")
    y = torch.addmm(bias, a, mat.t())
    return y.clamp_min_(0.0) if relu else y


class FoldedConv:
    """One square convolution (any stride, symmetric padding) with its normalization folded in.

    ``mat``: the GEMM layout (C_out, k*k*C_in/groups), ordered (ky, kx, c_in) so that it multiplies
    channel-last im2col rows; :attr:`weight`: the (C_out, C_in/groups, k, k) layout for ``F.conv2d``;
    ``bias``: (C_out,). A fold holds the layout it was made in (``fold_conv(layout=...)``) and builds
    the other on first use (a view for 1x1 convs), so a fold that runs only one way holds one copy.
    """

    def __init__(self, bias: torch.Tensor, kernel_size: int, padding: int, dilation: int, groups: int,
                 stride: int = 1, *, mat: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None):
        if (mat is None) == (weight is None):
            raise ValueError("FoldedConv: give exactly one of mat and weight")
        self.bias, self.kernel_size, self.padding, self.dilation = bias, kernel_size, padding, dilation
        self.groups, self.stride = groups, stride
        self._mat, self._dense = mat, weight

    @property
    def mat(self) -> torch.Tensor:
        if self._mat is None:
            self._mat = self._dense.permute(0, 2, 3, 1).reshape(self._dense.shape[0], -1).contiguous()
        return self._mat

    @property
    def weight(self) -> torch.Tensor:
        k = self.kernel_size
        if self._dense is None:
            if k == 1:
                return self._mat.view(self._mat.shape[0], -1, 1, 1)
            self._dense = self._mat.view(self._mat.shape[0], k, k, -1).permute(0, 3, 1, 2).contiguous()
        return self._dense

    def to(self, dtype: torch.dtype) -> "FoldedConv":
        """A copy with weights and bias in ``dtype`` (the layout it holds)."""
        held = {"mat": self._mat.to(dtype)} if self._mat is not None else {"weight": self._dense.to(dtype)}
        return FoldedConv(self.bias.to(dtype), self.kernel_size, self.padding, self.dilation, self.groups,
                          self.stride, **held)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution with the folded weights (:func:`onednn_conv`): x (B,C_in,H,W) -> (B,C_out,H',W')."""
        return onednn_conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


@dataclass
class FoldedUnit:
    """A stem or residual unit with BN folded (eval only).

    kind: "stem" (convs = [conv1]; then relu, 3x3/2 max pool), "bottleneck" (convs = [1x1, 3x3, 1x1])
    or "basic" (convs = [3x3, 3x3]); shortcut: the projection conv, None for identity. A unit:
    relu(convs[-1](... relu(convs[0](x))) + shortcut(x)). From :func:`fold_unit` (identity shortcut,
    stride 1: the sparse kernels can run it) or :func:`fold_block` (any).
    """

    kind: str
    convs: List[FoldedConv]
    channels: int
    shortcut: Optional[FoldedConv] = None
    _casts: Dict[torch.dtype, "FoldedUnit"] = field(default_factory=dict, repr=False, compare=False)

    def to_dtype(self, dtype: torch.dtype) -> "FoldedUnit":
        """This unit with weights and biases in ``dtype`` (``self`` if already there), cached per dtype.

        The gather kernels multiply with ``out=`` buffers, which autocast leaves alone: under
        ``torch.autocast`` they run in the activations' dtype (bf16 / fp16) with the fp32 fold
        rounded to it, as autocast rounds the weights of a dense conv.
        """
        if self.convs[0].bias.dtype == dtype:
            return self
        hit = self._casts.get(dtype)
        if hit is None:
            hit = self._casts[dtype] = FoldedUnit(self.kind, [c.to(dtype) for c in self.convs], self.channels,
                                                  None if self.shortcut is None else self.shortcut.to(dtype))
        return hit


def _norm_scale_shift(norm: Optional[nn.Module], c_out: int, where: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) of an inference-mode norm layer (identity when ``norm`` is None)."""
    if norm is None:
        return torch.ones(c_out), torch.zeros(c_out)
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        if norm.training and norm.track_running_stats:
            raise ValueError(f"fold_unit: {where}.norm ({type(norm).__name__}) is in training mode; "
                             "sparse execution is inference-only, call model.eval() first")
        if norm.running_mean is None:
            raise ValueError(f"fold_unit: {where}.norm has no running statistics (track_running_stats=False)")
    fixed = inference_affine(norm)
    if fixed is None:
        raise ValueError(f"fold_unit: cannot fold {where}.norm of type {type(norm).__name__}; "
                         "sparse execution supports FrozenBN / BN / SyncBN (cfg.MODEL.RESNETS.NORM)")
    return fixed[0].detach(), fixed[1].detach()


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


def fold_conv(conv: nn.Conv2d, where: str = "conv", layout: str = "gemm") -> FoldedConv:
    """Fold ``conv.norm`` (detectron2 ``Conv2d``) into a copy of weight and bias; see :class:`FoldedConv`.
    ``layout``: "gemm" (sparse kernels) or "dense" (``F.conv2d``) held."""
    k, st, pad, dil = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    if k[0] != k[1] or any(t != (t[0],) * 2 for t in (st, pad, dil)):
        raise ValueError(f"fold_conv: {where} must be a square conv with equal strides / padding / dilation; got "
                         f"kernel {k}, stride {st}, padding {pad}, dilation {dil}")
    w, shift = folded_weight_bias(conv, where, "fold_unit" if layout == "gemm" else "fold_block")
    held = {"mat": w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous()} if layout == "gemm" \
        else {"weight": w.contiguous()}
    return FoldedConv(shift, k[0], pad[0], dil[0], conv.groups, st[0], **held)


def _unit_layout(block: nn.Module, what: str) -> Tuple[str, Tuple[str, ...]]:
    if isinstance(block, BottleneckBlock):
        return "bottleneck", ("conv1", "conv2", "conv3")
    if isinstance(block, BasicBlock):
        return "basic", ("conv1", "conv2")
    raise TypeError(f"{what}: expected a detectron2 BasicStem / BottleneckBlock / BasicBlock, got {type(block).__name__}")


def fold_block(block: nn.Module) -> FoldedUnit:
    """Fold a detectron2 ``BasicStem`` / ``BottleneckBlock`` / ``BasicBlock`` (any stride, any shortcut) for
    :func:`dense_folded_forward`."""
    from detectron2.modeling.backbone.resnet import BasicStem

    if isinstance(block, BasicStem):
        conv = fold_conv(block.conv1, "stem.conv1", layout="dense")
        return FoldedUnit("stem", [conv], int(conv.bias.shape[0]))
    kind, names = _unit_layout(block, "fold_block")
    convs = [fold_conv(getattr(block, n), n, layout="dense") for n in names]
    shortcut = None if block.shortcut is None else fold_conv(block.shortcut, "shortcut", layout="dense")
    return FoldedUnit(kind, convs, int(convs[-1].bias.shape[0]), shortcut)


def fold_unit(block: nn.Module) -> FoldedUnit:
    """Fold a detectron2 ``BottleneckBlock`` / ``BasicBlock`` with identity shortcut and stride 1 (a unit
    l >= 1 of a stage) for the sparse kernels and :func:`dense_folded_forward`."""
    if not isinstance(block, (BottleneckBlock, BasicBlock)):
        raise TypeError(f"fold_unit: expected detectron2 BottleneckBlock or BasicBlock, got {type(block).__name__}")
    name = type(block).__name__
    if block.shortcut is not None or block.stride != 1:
        raise ValueError(f"fold_unit: {name} has a projection shortcut or stride {block.stride}; only units "
                         "l >= 1 of a stage (identity shortcut, stride 1) can run sparsely")
    kind, names = _unit_layout(block, "fold_unit")
    if kind == "bottleneck" and (block.conv1.kernel_size != (1, 1) or block.conv3.kernel_size != (1, 1)):
        raise ValueError(f"fold_unit: unexpected BottleneckBlock layout {block}")
    if kind == "basic" and (block.conv1.groups != 1 or block.conv1.dilation != (1, 1)):
        raise ValueError(f"fold_unit: unexpected BasicBlock layout {block}")
    for n in names:
        c = getattr(block, n)
        if c.stride != (1, 1) or c.padding[0] != c.dilation[0] * (c.kernel_size[0] // 2):
            raise ValueError(f"fold_unit: {n} must be a square, stride-1, 'same'-padded conv; got kernel "
                             f"{c.kernel_size}, stride {c.stride}, padding {c.padding}, dilation {c.dilation}")
    convs = [fold_conv(getattr(block, n), where=n) for n in names]
    if convs[0].groups != 1 or convs[-1].groups != 1:
        raise ValueError(f"fold_unit: only the middle 3x3 conv of a bottleneck may be grouped ({name})")
    return FoldedUnit(kind, convs, int(convs[-1].mat.shape[0]))


def dense_folded_forward(folded: FoldedUnit, x: torch.Tensor) -> torch.Tensor:
    """What the unfolded stem / unit computes (up to fp32 round-off), at every position: x (B,C,H,W) ->
    (B,C',H',W'). For a unit l >= 1, the fair dense baseline of the sparse kernels."""
    if folded.kind == "stem":
        return F.max_pool2d(folded.convs[0](x).relu_(), kernel_size=3, stride=2, padding=1)
    h = x
    for c in folded.convs[:-1]:
        h = c(h).relu_()
    h = folded.convs[-1](h)
    return h.add_(x if folded.shortcut is None else folded.shortcut(x)).relu_()


def fold_norms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval only) in which every detectron2 ``Conv2d`` has its norm folded into its
    weight and bias (``norm`` removed): the same function up to fp32 round-off, e.g. a faster dense baseline."""
    import copy

    from detectron2.layers import Conv2d

    model = copy.deepcopy(model)
    for name, m in model.named_modules():
        if isinstance(m, Conv2d) and m.norm is not None:
            w, b = folded_weight_bias(m, name, "fold_norms")
            m.weight = nn.Parameter(w.contiguous(), requires_grad=False)
            m.bias = nn.Parameter(b, requires_grad=False)
            m.norm = None
    return model


def folded_resnet_forward(resnet: nn.Module) -> Callable[[torch.Tensor], Dict[str, torch.Tensor]]:
    """The forward of a detectron2 ``ResNet`` (eval, no classifier head) with every stem / unit folded
    (:func:`fold_block`) and run by :func:`dense_folded_forward` on a channels-last state (oneDNN convs): the
    fastest dense execution of the network this library has, the fair baseline of the sparse path.
    x (B,3,H,W) -> {name: (B,C,H/s,W/s)} for ``resnet``'s out features, channels-last if x is, else NCHW.
    Folded from the weights at call time of this function (refold after loading new weights)."""
    if getattr(resnet, "num_classes", None) is not None:
        raise ValueError("folded_resnet_forward: ResNets with a classifier head are not supported")
    stem = fold_block(resnet.stem)
    stages = [(name, [fold_block(b) for b in stage]) for name, stage in zip(resnet.stage_names, resnet.stages)]
    wanted = set(resnet._out_features)

    @torch.no_grad()
    def forward(x: torch.Tensor) -> Dict[str, torch.Tensor]:
        keep = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        x = dense_folded_forward(stem, x.contiguous(memory_format=torch.channels_last))
        out = {"stem": x} if "stem" in wanted else {}
        for name, blocks in stages:
            for f in blocks:
                x = dense_folded_forward(f, x)
            if name in wanted:
                out[name] = x
        return out if keep else {k: v.contiguous() for k, v in out.items()}

    return forward
