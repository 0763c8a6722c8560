"""CIFAR ResNets (He et al. 2016, section 4.2) built from the detector's own backbone code.

A 3x3 stem conv with 16 channels, then 3 stages of ``n`` detectron2 BasicBlocks with 16 / 32 / 64
channels (strides 1, 2, 2), named res2, res3, res4 like detectron2's stages. ``n = 5`` is
ResNet-32, ``n = 18`` is ResNet-110. The stages are wrapped by :class:`SACTResNet`, so the
halting arithmetic (act.py), the halting branches (halting.py) and the FLOP rules (flops.py)
are the ones of the detector.
"""
from typing import List, Optional, Sequence

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from detectron2.modeling.backbone.resnet import BasicBlock, ResNet

from .backbone import SACTResNet

__all__ = ["CifarStem", "make_cifar_stages", "build_cifar_resnet", "cifar_depth"]


class CifarStem(CNNBlockBase):
    """3x3 conv (stride 1) + norm + ReLU; (B,3,H,W) -> (B,C,H,W). No max pool."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16, norm: str = "BN") -> None:
        super().__init__(in_channels, out_channels, 1)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False,
                            norm=get_norm(norm, out_channels))
        weight_init.c2_msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(self.conv1(x))


def cifar_depth(num_units: int) -> int:
    """Layer count of a CIFAR ResNet with ``num_units`` basic units per stage (6n + 2)."""
    return 6 * num_units + 2


def make_cifar_stages(num_units: int, widths: Sequence[int] = (16, 32, 64), norm: str = "BN") -> List[List[BasicBlock]]:
    """Three stages of ``num_units`` detectron2 BasicBlocks; the first unit of stage 2 and 3 has stride 2."""
    if num_units < 1:
        raise ValueError(f"a CIFAR ResNet stage needs at least 1 unit, got {num_units}")
    if len(widths) != 3:
        raise ValueError(f"a CIFAR ResNet has 3 stages, got widths {list(widths)}")
    stages, in_ch = [], widths[0]
    for idx, out_ch in enumerate(widths):
        first_stride = 1 if idx == 0 else 2
        stages.append(ResNet.make_stage(BasicBlock, num_units, stride_per_block=[first_stride] + [1] * (num_units - 1),
                                        in_channels=in_ch, out_channels=out_ch, norm=norm))
        in_ch = out_ch
    return stages


def build_cifar_resnet(num_units: int, *, width: int = 16, norm: str = "BN", mode: str = "sact",
                       adaptive_stages: Sequence[str] = ("res2", "res3", "res4"), eps: float = 0.01,
                       halt_norm: str = "BN", halt_kernel_size: int = 3, halt_bias_init: float = -3.0,
                       freeze_at: int = 0, halting_kwargs: Optional[dict] = None) -> SACTResNet:
    """CIFAR ResNet-(6n+2) backbone; outputs res2 (stride 1), res3 (2), res4 (4)."""
    stem = CifarStem(3, width, norm)
    stages = make_cifar_stages(num_units, (width, 2 * width, 4 * width), norm)
    return SACTResNet(stem, stages, out_features=["res2", "res3", "res4"], freeze_at=freeze_at, mode=mode,
                      adaptive_stages=list(adaptive_stages), eps=eps, halt_norm=halt_norm,
                      halt_kernel_size=halt_kernel_size, halt_bias_init=halt_bias_init, halting_kwargs=halting_kwargs)
