"""Halting branches: spatial (SACT, one score per position) and global (ACT, one per image)."""
import torch
import torch.nn.functional as F
from detectron2.layers import get_norm
from torch import nn

__all__ = ["SpatialHalting", "GlobalHalting", "build_halting"]


def _norm(norm: str, channels: int) -> nn.Module:
    return get_norm(norm, channels) if norm else nn.Identity()


class SpatialHalting(nn.Module):
    """SACT: sigmoid(conv_kxk(BN(x)) + conv_1x1(BN(gap(x)))); x (B,C,H,W) -> h (B,1,H,W)."""

    def __init__(self, channels: int, norm: str = "BN", kernel_size: int = 3, bias_init: float = -3.0) -> None:
        super().__init__()
        self.local_norm = _norm(norm, channels)
        self.local_conv = nn.Conv2d(channels, 1, kernel_size, padding=kernel_size // 2, bias=True)
        self.global_norm = _norm(norm, channels)
        self.global_conv = nn.Conv2d(channels, 1, 1, bias=False)
        for conv in (self.local_conv, self.global_conv):
            nn.init.zeros_(conv.weight)
        nn.init.constant_(self.local_conv.bias, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.local_conv(self.local_norm(x))
        pooled = F.adaptive_avg_pool2d(x, 1)
        return torch.sigmoid(local + self.global_conv(self.global_norm(pooled)))


class GlobalHalting(nn.Module):
    """ACT: sigmoid(conv_1x1(BN(gap(x))) + b); x (B,C,H,W) -> h (B,1,1,1)."""

    def __init__(self, channels: int, norm: str = "BN", bias_init: float = -3.0) -> None:
        super().__init__()
        self.global_norm = _norm(norm, channels)
        self.global_conv = nn.Conv2d(channels, 1, 1, bias=True)
        nn.init.zeros_(self.global_conv.weight)
        nn.init.constant_(self.global_conv.bias, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.global_conv(self.global_norm(F.adaptive_avg_pool2d(x, 1))))


def build_halting(mode: str, channels: int, norm: str, kernel_size: int, bias_init: float) -> nn.Module:
    """The halting branch of one unit for MODE ``sact`` or ``act``."""
    if mode == "sact":
        return SpatialHalting(channels, norm, kernel_size, bias_init)
    if mode == "act":
        return GlobalHalting(channels, norm, bias_init)
    raise ValueError(f"no halting branch for MODE {mode!r}")
