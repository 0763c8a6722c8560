"""The original SACT code's ImageNet network: pre-activation ResNet v2 (``cfg.MODEL.SACT.VARIANT original``).

As ``imagenet_model.py`` of github.com/mfigurnov/sact (architecture facts in ``docs/original_networks.md``):

- stem: 7x7/2 conv with bias, no BN / activation (symmetric pad 3), then a 3x3/2 max pool with TF
  'SAME' padding (even sizes: 0 before, 1 after);
- unit (``bottleneck_v2``): ``preact = ReLU(BN(x))``; shortcut = 1x1 conv with bias on ``preact``
  (stride s) when the depth changes, else ``x`` (subsampled); residual = 1x1 conv -> BN -> ReLU ->
  3x3 conv stride s (pad 1) -> BN -> ReLU -> 1x1 conv with bias; out = shortcut + residual;
- block b (0-based): ``units[b]`` units of depth 4*bc*2^b, bottleneck bc*2^b (bc = base channels, 64),
  stride 2 in the *first* unit of blocks 2-4; BN eps 1e-5, momentum 0.003 (TF decay 0.997);
- head (classifier.py): ``postnorm`` BN + ReLU -> spatial mean -> ``linear`` (1001 classes, 0 = background).

Halting (SACT / ACT) is sact_det's: :class:`SACTStage` + the halting branches of halting.py. Names
follow ``docs/original_networks.md`` (stem.conv1, res2.0.preact, res2.0.shortcut, res2.0.conv1.norm, ...).
The C4 detector uses blocks 1-3 as backbone and block 4 + ``postnorm`` as box head
(:class:`OriginalRes5ROIHeads`).
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads
from torch import nn

from ...config.constants import STAGE_ORDER
from ...config.defaults import validate_sact_cfg
from ..halting.branches import variance_scaling_
from ..sact.backbone import SACTResNet
from .layers import TFSameMaxPool2d, original_norm

__all__ = ["OriginalSACTResNet", "V2Stem", "BottleneckV2", "make_v2_block", "make_v2_stages", "original_units",
           "build_original_resnet_v2", "build_original_resnet_v2_backbone", "OriginalRes5ROIHeads",
           "IMAGENET_BN_EPS", "IMAGENET_BN_MOMENTUM", "STANDARD_UNITS"]

IMAGENET_BN_EPS = 1e-5
IMAGENET_BN_MOMENTUM = 1.0 - 0.997  # TF batch_norm decay 0.997
STEM_CHANNELS = 64  # the stem has 64 channels whatever the base width
STANDARD_UNITS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3], 200: [3, 24, 36, 3]}


def init_conv_(conv: nn.Conv2d) -> nn.Conv2d:
    """TF-slim's conv initialisation in the original arg scopes: variance scaling (He), bias 0."""
    variance_scaling_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class OriginalSACTResNet(SACTResNet):
    """SACTResNet of the original networks (ImageNet v2 or CIFAR): dense (masked) execution only.

    FLOPs follow the original counting, where every unit of a SACT block is run: the global halting
    conv of a unit counts even where no position is active any more (flops.stage_flops).
    """

    def __init__(self, stem: nn.Module, stages: List[List[nn.Module]], **kwargs) -> None:
        execution = kwargs.get("execution", "dense")
        if execution != "dense":
            raise ValueError(f"EXECUTION {execution!r} is not implemented for the original SACT networks "
                             "(cfg.MODEL.SACT.VARIANT original); use EXECUTION dense")
        super().__init__(stem, stages, **kwargs)
        for name in self.adaptive_stages:
            getattr(self, name).count_idle_global_halting = True

    def set_execution(self, execution: str, sparse_max_density: Optional[float] = None) -> None:
        if execution != "dense":
            raise ValueError(f"EXECUTION {execution!r} is not implemented for the original SACT networks "
                             "(pre-activation units have no sparse kernels); only 'dense'")
        super().set_execution(execution, sparse_max_density)


class V2Stem(CNNBlockBase):
    """conv1 7x7/2 with bias (no BN) -> max pool 3x3/2 TF 'SAME'; (B,3,H,W) -> (B,64,ceil(ceil(H/2)/2),...)."""

    def __init__(self, in_channels: int = 3, out_channels: int = STEM_CHANNELS) -> None:
        super().__init__(in_channels, out_channels, 4)
        self.conv1 = init_conv_(Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=True))
        self.pool = TFSameMaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv1(x))


class BottleneckV2(CNNBlockBase):
    """Pre-activation bottleneck unit (``bottleneck_v2``); (B,Cin,H,W) -> (B,Cout,ceil(H/s),ceil(W/s))."""

    def __init__(self, in_channels: int, out_channels: int, *, bottleneck_channels: int, stride: int = 1,
                 norm: str = "BN", bn_eps: float = IMAGENET_BN_EPS, bn_momentum: Optional[float] = IMAGENET_BN_MOMENTUM
                 ) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.preact = original_norm(norm, in_channels, bn_eps, bn_momentum)
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = init_conv_(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=True))
        self.conv1 = init_conv_(Conv2d(in_channels, bottleneck_channels, 1, bias=False,
                                       norm=original_norm(norm, bottleneck_channels, bn_eps, bn_momentum)))
        self.conv2 = init_conv_(Conv2d(bottleneck_channels, bottleneck_channels, 3, stride=stride, padding=1,
                                       bias=False, norm=original_norm(norm, bottleneck_channels, bn_eps, bn_momentum)))
        self.conv3 = init_conv_(nn.Conv2d(bottleneck_channels, out_channels, 1, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = F.relu(self.preact(x))
        if self.shortcut is not None:
            shortcut = self.shortcut(preact)
        else:  # slim's resnet_utils.subsample: identity at stride 1
            shortcut = x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]
        out = F.relu(self.conv1(preact))
        out = F.relu(self.conv2(out))
        return shortcut + self.conv3(out)


def make_v2_block(index: int, num_units: int, base_channels: int = 64, norm: str = "BN",
                  in_channels: Optional[int] = None, bn_momentum: Optional[float] = IMAGENET_BN_MOMENTUM
                  ) -> List[BottleneckV2]:
    """Block ``index`` (0-based) of ``get_network``: depth 4*bc*2^b, bottleneck bc*2^b, stride 2 in unit 1 of b >= 1.

    ``in_channels`` defaults to the previous block's depth (the stem's 64 for block 0).
    """
    out_ch, bottleneck = 4 * base_channels * 2 ** index, base_channels * 2 ** index
    if in_channels is None:
        in_channels = STEM_CHANNELS if index == 0 else out_ch // 2
    first_stride = 1 if index == 0 else 2
    blocks = []
    for u in range(int(num_units)):
        blocks.append(BottleneckV2(in_channels if u == 0 else out_ch, out_ch, bottleneck_channels=bottleneck,
                                   stride=first_stride if u == 0 else 1, norm=norm, bn_momentum=bn_momentum))
    return blocks


def make_v2_stages(units: Sequence[int], base_channels: int = 64, norm: str = "BN", in_channels: int = STEM_CHANNELS,
                   bn_momentum: Optional[float] = IMAGENET_BN_MOMENTUM) -> List[List[BottleneckV2]]:
    """Blocks 1-4 of the original ImageNet network (``units[b]`` units in block b)."""
    return [make_v2_block(b, num, base_channels, norm, in_channels if b == 0 else None, bn_momentum)
            for b, num in enumerate(units)]


def original_units(cfg) -> List[int]:
    """Units per block: cfg.MODEL.SACT.ORIGINAL_UNITS, else the standard net of cfg.MODEL.RESNETS.DEPTH."""
    units = [int(u) for u in cfg.MODEL.SACT.ORIGINAL_UNITS]
    if units:
        return units
    depth = int(cfg.MODEL.RESNETS.DEPTH)
    if depth not in STANDARD_UNITS:
        raise ValueError(f"cfg.MODEL.RESNETS.DEPTH {depth} has no original ResNet v2 "
                         f"(one of {sorted(STANDARD_UNITS)}); "
                         "or give cfg.MODEL.SACT.ORIGINAL_UNITS")
    return list(STANDARD_UNITS[depth])


def original_halting_kwargs(cfg, bn_eps: float, bn_momentum: Optional[float], activation=None) -> Dict:
    return {"init": cfg.MODEL.SACT.HALT_INIT, "norm_eps": bn_eps, "norm_momentum": bn_momentum,
            "activation": activation}


def build_original_resnet_v2(cfg, *, input_channels: int = 3,
                             out_features: Sequence[str] = STAGE_ORDER,
                             freeze_at: int = 0) -> OriginalSACTResNet:
    """The ImageNet pre-activation ResNet v2 of the original code with cfg.MODEL.SACT halting.

    Widths from cfg.MODEL.SACT.ORIGINAL_BASE_CHANNELS (not MODEL.RESNETS.*_CHANNELS), norm from
    cfg.MODEL.RESNETS.NORM, halting from cfg.MODEL.SACT (MODE, STAGES, EPS, HALT_*).
    """
    validate_sact_cfg(cfg)
    s = cfg.MODEL.SACT
    stem = V2Stem(input_channels)
    stages = make_v2_stages(original_units(cfg), int(s.ORIGINAL_BASE_CHANNELS), cfg.MODEL.RESNETS.NORM)
    return OriginalSACTResNet(
        stem, stages, out_features=list(out_features), freeze_at=int(freeze_at), mode=s.MODE,
        adaptive_stages=list(s.STAGES), eps=float(s.EPS), halt_norm=s.HALT_NORM,
        halt_kernel_size=int(s.HALT_KERNEL_SIZE), halt_bias_init=float(s.HALT_BIAS_INIT), execution=s.EXECUTION,
        tau=float(s.TAU),
        halting_kwargs=original_halting_kwargs(cfg, IMAGENET_BN_EPS, IMAGENET_BN_MOMENTUM))


def build_original_resnet_v2_backbone(cfg, input_shape: ShapeSpec) -> OriginalSACTResNet:
    """Detector backbone (via build_sact_resnet_backbone with VARIANT original): blocks up to
    cfg.MODEL.RESNETS.OUT_FEATURES (C4: res4 = block 3), frozen per cfg.MODEL.BACKBONE.FREEZE_AT."""
    return build_original_resnet_v2(cfg, input_channels=input_shape.channels,
                                    out_features=list(cfg.MODEL.RESNETS.OUT_FEATURES),
                                    freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@ROI_HEADS_REGISTRY.register()
class OriginalRes5ROIHeads(Res5ROIHeads):
    """C4 box head of the paper's detector: block 4 of the original ResNet v2 (dense) + ``postnorm``
    (BN + ReLU) on each pooled region; the box predictor sees the spatial mean.

    Parameters: ``res5.<unit>.*`` (as the classifier's block 4) and ``postnorm.*``.
    """

    @configurable
    def __init__(self, *, postnorm: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.postnorm = postnorm

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        channels = 32 * int(cfg.MODEL.SACT.ORIGINAL_BASE_CHANNELS)
        ret["postnorm"] = original_norm(cfg.MODEL.RESNETS.NORM, channels, IMAGENET_BN_EPS, IMAGENET_BN_MOMENTUM)
        return ret

    @classmethod
    def _build_res5_block(cls, cfg):
        if cfg.MODEL.SACT.VARIANT != "original":
            raise ValueError("OriginalRes5ROIHeads is the box head of cfg.MODEL.SACT.VARIANT original")
        bc = int(cfg.MODEL.SACT.ORIGINAL_BASE_CHANNELS)
        block4 = make_v2_block(3, original_units(cfg)[3], bc, cfg.MODEL.RESNETS.NORM)
        return nn.Sequential(*block4), block4[-1].out_channels

    def _shared_roi_transform(self, features: List[torch.Tensor], boxes):
        return F.relu(self.postnorm(self.res5(self.pooler(features, boxes))))
