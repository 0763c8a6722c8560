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
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from detectron2.layers import get_norm
from torch import nn

from ...config.defaults import VALID_HALT_INITS

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
