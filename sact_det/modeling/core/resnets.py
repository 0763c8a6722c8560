"""Plain detectron2 ResNet parts (stems and stage lists) that every backbone family wraps.

``make_resnet_stages``: detectron2's stem + stages from cfg.MODEL.RESNETS (ImageNet ResNets);
``CifarStem`` / ``make_cifar_stages``: the CIFAR ResNets of He et al. 2016 (section 4.2) from
detectron2 BasicBlocks. No family (SACT, AIG, BlockDrop) is imported here.
"""
from typing import List, Sequence

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet

__all__ = ["BLOCKS_PER_STAGE", "make_resnet_stages", "CifarStem", "make_cifar_stages"]

BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def make_resnet_stages(cfg, input_channels: int):
    """detectron2's stem and stage blocks from cfg.MODEL.RESNETS (same construction as its builder)."""
    r = cfg.MODEL.RESNETS
    depth = r.DEPTH
    if depth not in BLOCKS_PER_STAGE:
        raise ValueError(f"cfg.MODEL.RESNETS.DEPTH must be one of {sorted(BLOCKS_PER_STAGE)}, got {depth}")
    if any(r.DEFORM_ON_PER_STAGE):
        raise ValueError("cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE is not supported by the adaptive backbones")
    stem = BasicStem(in_channels=input_channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM)
    in_ch, out_ch = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
    bottleneck = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    if depth in (18, 34) and out_ch != 64:
        raise ValueError("cfg.MODEL.RESNETS.RES2_OUT_CHANNELS must be 64 for R18/R34")
    stages = []
    for idx, num_blocks in enumerate(BLOCKS_PER_STAGE[depth]):
        dilation = r.RES5_DILATION if idx == 3 else 1
        first_stride = 1 if idx == 0 or (idx == 3 and dilation == 2) else 2
        kwargs = dict(num_blocks=num_blocks, stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                      in_channels=in_ch, out_channels=out_ch, norm=r.NORM)
        if depth in (18, 34):
            kwargs["block_class"] = BasicBlock
        else:
            kwargs.update(block_class=BottleneckBlock, bottleneck_channels=bottleneck, stride_in_1x1=r.STRIDE_IN_1X1,
                          dilation=dilation, num_groups=r.NUM_GROUPS)
        stages.append(ResNet.make_stage(**kwargs))
        in_ch, out_ch, bottleneck = out_ch, out_ch * 2, bottleneck * 2
    return stem, stages


class CifarStem(CNNBlockBase):
    """3x3 conv (stride 1) + norm + ReLU; (B,3,H,W) -> (B,C,H,W). No max pool."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16, norm: str = "BN") -> None:
        super().__init__(in_channels, out_channels, 1)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False,
                            norm=get_norm(norm, out_channels))
        weight_init.c2_msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(self.conv1(x))


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
