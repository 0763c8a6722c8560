"""Halting branches: spatial (SACT, one score per position) and global (ACT, one per image).

Initialisation of the halting conv weights (``init``):
- ``"variance_scaling"`` (default, as the original SACT code: slim ``conv2d`` inside its
  ``resnet_arg_scope`` uses ``variance_scaling_initializer()`` = He, fan-in, truncated normal);
- ``"zeros"``: every position starts with the same score ``sigmoid(bias_init)``.
The bias of the logit (local conv for SACT, global conv for ACT) starts at ``bias_init`` (-3).
The original CIFAR networks apply a leaky ReLU after the halting BNs (``activation``) and use
BN eps 1e-3 (``norm_eps``); the ImageNet ones have no activation and eps 1e-5.
"""
import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import get_norm
from torch import nn

from ...config.defaults import VALID_HALT_INITS
from ..core.norms import inference_affine

__all__ = ["SpatialHalting", "GlobalHalting", "build_halting", "variance_scaling_", "VALID_HALT_INITS",
           "set_norm_stats"]



def variance_scaling_(weight: torch.Tensor, factor: float = 2.0) -> torch.Tensor:
    """In place: TF-slim ``variance_scaling_initializer(factor=2.0, mode='FAN_IN', uniform=False)``.

    A normal truncated at 2 sigma with sigma = sqrt(1.3 * factor / fan_in) (the 1.3 undoes the
    truncation: the resulting std is ~sqrt(factor / fan_in)); fan_in = C_in/groups * kh * kw.
    """
    fan_in = weight[0].numel()
    std = math.sqrt(1.3 * factor / fan_in)
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)


def _init_weight(weight: torch.Tensor, init: str) -> None:
    if init == "variance_scaling":
        variance_scaling_(weight)
    elif init == "zeros":
        nn.init.zeros_(weight)
    else:
        raise ValueError(f"halting init must be one of {VALID_HALT_INITS}, got {init!r}")


def set_norm_stats(norm: nn.Module, eps: Optional[float] = None, momentum: Optional[float] = None) -> nn.Module:
    """Set ``eps`` / ``momentum`` of a BN-like module (no-op for other norms); returns it."""
    if eps is not None and hasattr(norm, "eps"):
        norm.eps = float(eps)
    if momentum is not None and isinstance(norm, nn.modules.batchnorm._BatchNorm):
        norm.momentum = float(momentum)
    return norm


def _norm(norm: str, channels: int, eps: Optional[float], momentum: Optional[float]) -> nn.Module:
    return set_norm_stats(get_norm(norm, channels), eps, momentum) if norm else nn.Identity()


def _activation(fn: Optional[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    return x if fn is None else fn(x)


def _moments(x: torch.Tensor, dims: Tuple[int, ...], n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance of x over ``dims`` (n values each) as E[x^2] - E[x]^2 from two sums (many times
    faster on CPU than ``torch.var_mean``; fp32 sums of unit-scale activations keep ~1e-6 relative error)."""
    mean = x.sum(dims) / n
    return mean, ((x * x).sum(dims) / n - mean * mean).clamp_min(0)


def _batch_norm_affine(norm: nn.BatchNorm2d, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Training-mode BatchNorm as (a, d) (B,C) from the batch statistics of x, updating the running statistics
    as the module does (momentum, unbiased running variance, ``num_batches_tracked``)."""
    B, C = x.shape[:2]
    n = x.numel() // C
    mean, var = _moments(x, (0, 2, 3), n)  # (C,)
    with torch.no_grad():
        m = norm.momentum
        norm.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
        norm.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)
        norm.num_batches_tracked.add_(1)
    a = torch.rsqrt(var + norm.eps)
    a = a * norm.weight if norm.weight is not None else a
    d = (norm.bias if norm.bias is not None else 0.0) - mean * a
    return a.expand(B, C), d.expand(B, C)


def norm_affine(norm: nn.Module, x: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(a, d), each (B,C), with ``norm(x) = a * x + d`` per (image, channel), differentiable in x (training-mode
    ``nn.BatchNorm2d`` updates its running statistics as its forward would); None for norms this does not
    cover (SyncBN, cumulative-average BN: the module must run). x: (B,C,H,W)."""
    B, C = x.shape[:2]
    if isinstance(norm, nn.Identity):
        return x.new_ones(B, C), x.new_zeros(B, C)
    if isinstance(norm, nn.GroupNorm):
        g = norm.num_groups
        mean, var = _moments(x.reshape(B, g, -1), (2,), x[0].numel() // g)  # (B, g)
        rstd = torch.rsqrt(var + norm.eps).repeat_interleave(C // g, 1)  # (B, C)
        a = rstd * norm.weight if norm.weight is not None else rstd
        shift = norm.bias if norm.bias is not None else 0.0
        return a, shift - mean.repeat_interleave(C // g, 1) * a
    if type(norm) is nn.BatchNorm2d and norm.training and norm.track_running_stats and norm.momentum is not None:
        return _batch_norm_affine(norm, x)
    fixed = inference_affine(norm)
    return None if fixed is None else (fixed[0].expand(B, C), fixed[1].expand(B, C))


def shift_sum(taps: torch.Tensor, p: int) -> torch.Tensor:
    """(..., H, W) sum over the k2 = (2p+1)^2 maps ``taps[..., k, :, :]`` (..., k2, H, W), each shifted by its
    tap's offset (ky - p, kx - p), zero outside the map: a kxk conv (padding p) given the per-tap products."""
    H, W = taps.shape[-2:]
    if p == 0:
        return taps[..., 0, :, :]
    k = 2 * p + 1
    tp = F.pad(taps, (p, p, p, p))
    z = tp[..., 0, :H, :W]
    for i in range(1, taps.shape[-3]):
        ky, kx = divmod(i, k)
        z = z + tp[..., i, ky: ky + H, kx: kx + W]
    return z


def supports_affine_conv(conv: nn.Conv2d) -> bool:
    """Whether :func:`affine_conv` computes this conv: one output channel, square odd kernel, stride 1,
    dilation 1, 'same' zero padding, no groups."""
    k = conv.kernel_size
    return conv.out_channels == 1 and k[0] == k[1] and k[0] % 2 == 1 and conv.stride == (1, 1) \
        and conv.dilation == (1, 1) and conv.padding == (k[0] // 2, k[0] // 2) and conv.groups == 1 \
        and conv.padding_mode == "zeros"


def affine_conv(conv: nn.Conv2d, x: torch.Tensor, a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``conv(a * x + d)`` (:func:`supports_affine_conv`) without materializing ``a * x + d``: x (B,C,H,W),
    a, d (B,C) -> (B,1,H,W). The scaled map would be saved for backward (as large as x, and the conv
    would save its im2col columns); here one batched GEMM (B, k2, C) @ (B, C, HW) gives the per-tap
    products (saving only x, which the next unit saves anyway), summed shifted (:func:`shift_sum`);
    the shift d counts for the in-map taps only (zero padding)."""
    B, C, H, W = x.shape
    k = conv.kernel_size[0]
    w = conv.weight.reshape(C, k * k)
    taps = torch.bmm((a.unsqueeze(2) * w).transpose(1, 2).to(x.dtype), x.reshape(B, C, H * W))  # (B, k2, HW)
    shift = (d.unsqueeze(2) * w).sum(1).to(x.dtype)  # (B, k2)
    z = shift_sum(taps.view(B, k * k, H, W) + shift.view(B, k * k, 1, 1), k // 2)
    z = z.unsqueeze(1)
    return z if conv.bias is None else z + conv.bias.view(1, 1, 1, 1)


class SpatialHalting(nn.Module):
    """SACT: sigmoid(conv_kxk(act(BN(x))) + conv_1x1(act(BN(gap(x))))); x (B,C,H,W) -> h (B,1,H,W).

    ``act`` is the identity unless ``activation`` is given (original CIFAR: leaky ReLU 0.1).
    :meth:`logit` gives the sigmoid's input.
    """

    def __init__(self, channels: int, norm: str = "BN", kernel_size: int = 3, bias_init: float = -3.0, *,
                 init: str = "variance_scaling", activation: Optional[Callable] = None,
                 norm_eps: Optional[float] = None, norm_momentum: Optional[float] = None) -> None:
        super().__init__()
        self.local_norm = _norm(norm, channels, norm_eps, norm_momentum)
        self.local_conv = nn.Conv2d(channels, 1, kernel_size, padding=kernel_size // 2, bias=True)
        self.global_norm = _norm(norm, channels, norm_eps, norm_momentum)
        self.global_conv = nn.Conv2d(channels, 1, 1, bias=False)
        self.activation = activation
        for conv in (self.local_conv, self.global_conv):
            _init_weight(conv.weight, init)
        nn.init.constant_(self.local_conv.bias, bias_init)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        ad = norm_affine(self.local_norm, x) if self.activation is None and supports_affine_conv(self.local_conv) \
            and x.dtype in (torch.float32, torch.float64) else None
        if ad is not None:  # the normalized map is never materialized (nor saved for backward)
            local = affine_conv(self.local_conv, x, *ad)
        else:
            local = self.local_conv(_activation(self.activation, self.local_norm(x)))
        pooled = F.adaptive_avg_pool2d(x, 1)
        return local + self.global_conv(_activation(self.activation, self.global_norm(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(x))


class GlobalHalting(nn.Module):
    """ACT: sigmoid(conv_1x1(act(BN(gap(x)))) + b); x (B,C,H,W) -> h (B,1,1,1)."""

    def __init__(self, channels: int, norm: str = "BN", bias_init: float = -3.0, *, init: str = "variance_scaling",
                 activation: Optional[Callable] = None, norm_eps: Optional[float] = None,
                 norm_momentum: Optional[float] = None) -> None:
        super().__init__()
        self.global_norm = _norm(norm, channels, norm_eps, norm_momentum)
        self.global_conv = nn.Conv2d(channels, 1, 1, bias=True)
        self.activation = activation
        _init_weight(self.global_conv.weight, init)
        nn.init.constant_(self.global_conv.bias, bias_init)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x, 1)
        return self.global_conv(_activation(self.activation, self.global_norm(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(x))


def build_halting(mode: str, channels: int, norm: str, kernel_size: int, bias_init: float, **kwargs) -> nn.Module:
    """The halting branch of one unit for MODE ``sact`` or ``act``.

    ``kwargs``: ``init`` ("variance_scaling" | "zeros"), ``activation``, ``norm_eps``, ``norm_momentum``.
    """
    if mode == "sact":
        return SpatialHalting(channels, norm, kernel_size, bias_init, **kwargs)
    if mode == "act":
        return GlobalHalting(channels, norm, bias_init, **kwargs)
    raise ValueError(f"no halting branch for MODE {mode!r}")
