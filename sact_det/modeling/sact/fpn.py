"""SACT / ACT / dense ResNet-FPN backbones: detectron2's FPN over an adaptive ResNet bottom-up.

``SACTFPN`` is detectron2's ``FPN`` whose bottom-up network is an :class:`AdaptiveBackbone`
(``build_sact_resnet_backbone``: MODEL.SACT.STAGES chooses the adaptive stages among res2-res5). It
implements the contract by delegating to the bottom-up network; its per-image FLOPs add the FPN's
lateral / output convs and the top block (P6/P7 convs; max pooling is free) on the image's unpadded
size. Parameter names are detectron2's (``bottom_up.res2.0.conv1``, ``fpn_lateral2``, ...; halting
branches extra), so with halting disabled it is detectron2's ``build_resnet_fpn_backbone`` /
``build_retinanet_resnet_fpn_backbone`` with the same weights.
"""
import functools
import math
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from torch import nn

from ..core.contract import AdaptiveBackbone
from ..core.flop_rules import HW, conv_flops, conv_out_hw, dense_resnet_flops, stem_flops, unit_flops
from .backbone import StagePonder, build_sact_resnet_backbone

__all__ = ["SACTFPN", "build_sact_resnet_fpn_backbone", "build_sact_retinanet_resnet_fpn_backbone",
           "resnet_output_sizes", "fpn_layer_flops", "dense_extractor_flops", "dense_fpn_reference_flops"]


def resnet_output_sizes(resnet: nn.Module, hw: Sequence[int]) -> Dict[str, HW]:
    """Output size of every stage of a detectron2-style ResNet (``stem``, ``stages``, ``stage_names``) on
    one image of ``hw``, by conv arithmetic: {"res2": (h, w), ...}."""
    _, cur = stem_flops(resnet.stem, (int(hw[0]), int(hw[1])))
    sizes: Dict[str, HW] = {}
    for name, stage in zip(resnet.stage_names, resnet.stages):
        for block in stage:
            cur = unit_flops(block, cur, executed=False)[1]
        sizes[name] = cur
    return sizes


def _area(hw: HW) -> int:
    return hw[0] * hw[1]


def fpn_layer_flops(fpn: FPN, hw: Sequence[int]) -> float:
    """FLOPs of the FPN layers on one image of unpadded size ``hw``: every lateral (1x1) and output (3x3)
    conv on its level's size, plus the top block (LastLevelP6P7: the P6 and P7 convs; LastLevelMaxPool: 0)."""
    sizes = resnet_output_sizes(fpn.bottom_up, hw)
    flops = 0.0
    levels: Dict[str, HW] = {}
    for feature in fpn.in_features:
        level = int(math.log2(fpn.bottom_up.output_shape()[feature].stride))
        lateral, output = getattr(fpn, f"fpn_lateral{level}"), getattr(fpn, f"fpn_output{level}")
        lat_hw = conv_out_hw(lateral, sizes[feature])
        out_hw = conv_out_hw(output, lat_hw)
        flops += conv_flops(lateral, _area(lat_hw)) + conv_flops(output, _area(out_hw))
        levels[f"p{level}"] = out_hw
    top = fpn.top_block
    if top is None or isinstance(top, LastLevelMaxPool):
        return flops
    if isinstance(top, LastLevelP6P7):
        in_hw = sizes[top.in_feature] if top.in_feature in sizes else levels[top.in_feature]
        p6_hw = conv_out_hw(top.p6, in_hw)
        p7_hw = conv_out_hw(top.p7, p6_hw)
        return flops + conv_flops(top.p6, _area(p6_hw)) + conv_flops(top.p7, _area(p7_hw))
    raise TypeError(f"no FLOP rule for the FPN top block {type(top).__name__}")


class SACTFPN(FPN, AdaptiveBackbone):
    """detectron2's FPN over an adaptive ResNet bottom-up; the contract delegates to the bottom-up.

    forward: x (B,3,H,W) -> {"p2": (B,C,H/4,W/4), ..., "p6" or "p7"}, as detectron2's FPN.
    ``image_flops(i)`` = bottom-up FLOPs of image i (the units its positions ran) + :func:`fpn_layer_flops`
    of its unpadded size; ``extra_losses`` / ``image_outputs`` / ``log_statistics`` / ``set_execution``
    are the bottom-up's (ponder maps per adaptive stage).
    """

    def __init__(self, bottom_up: nn.Module, in_features: Sequence[str], out_channels: int, norm: str = "",
                 top_block: Optional[nn.Module] = None, fuse_type: str = "sum") -> None:
        if not isinstance(bottom_up, AdaptiveBackbone):
            raise TypeError(f"SACTFPN needs an AdaptiveBackbone bottom-up, got {type(bottom_up).__name__}")
        super().__init__(bottom_up=bottom_up, in_features=list(in_features), out_channels=out_channels, norm=norm,
                         top_block=top_block, fuse_type=fuse_type)

    # -- what tools and hooks read on a backbone --------------------------------------------------
    @property
    def family(self) -> str:  # type: ignore[override]
        return self.bottom_up.family

    @property
    def adaptive_stages(self) -> List[str]:
        """The bottom-up's adaptive stages (res2..res5 names)."""
        return list(getattr(self.bottom_up, "adaptive_stages", []))

    @property
    def last_ponder(self) -> Dict[str, StagePonder]:
        return self.bottom_up.last_ponder

    @property
    def tau(self) -> float:
        """The bottom-up's ponder-cost weight (the tau warm-up hook sets it here)."""
        return self.bottom_up.tau

    @tau.setter
    def tau(self, value: float) -> None:
        self.bottom_up.tau = value

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        self._record_input(x)
        self.bottom_up.set_image_sizes(self._given_sizes)
        return super().forward(x)

    # -- contract -------------------------------------------------------------------------------
    def extra_losses(self) -> Dict[str, torch.Tensor]:
        return self.bottom_up.extra_losses()

    def log_statistics(self) -> Dict[str, float]:
        return self.bottom_up.log_statistics()

    def image_flops(self, index: int) -> float:
        """Bottom-up FLOPs of image ``index`` of the last forward + the FPN layers' on its unpadded size."""
        return self.bottom_up.image_flops(index) + fpn_layer_flops(self, self.image_size(index))

    def image_outputs(self, index: int) -> Dict[str, Any]:
        return self.bottom_up.image_outputs(index)

    def set_execution(self, execution: str, sparse_max_density: Optional[float] = None) -> None:
        self.bottom_up.set_execution(execution, sparse_max_density)

    def freeze(self, freeze_at: int = 0) -> "SACTFPN":
        """detectron2's FREEZE_AT on the bottom-up (its halting branches stay trainable); FPN layers train."""
        self.bottom_up.freeze(freeze_at)
        return self

    def dense_flops(self, hw: Sequence[int]) -> float:
        """FLOPs of the same extractor with every unit run (no halting branches) on one image of ``hw``."""
        return dense_resnet_flops(self.bottom_up, hw)[0] + fpn_layer_flops(self, hw)


def _bottom_up(cfg, input_shape: ShapeSpec) -> nn.Module:
    if cfg.MODEL.SACT.VARIANT != "detectron2":
        raise ValueError(f"cfg.MODEL.SACT.VARIANT {cfg.MODEL.SACT.VARIANT!r}: the FPN backbones take detectron2's "
                         f"ResNet (VARIANT detectron2); the original SACT networks have no res5 / FPN layout")
    return build_sact_resnet_backbone(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_sact_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> SACTFPN:
    """SACT / ACT / dense ResNet + FPN with LastLevelMaxPool (P2-P6), as detectron2's build_resnet_fpn_backbone."""
    f = cfg.MODEL.FPN
    return SACTFPN(_bottom_up(cfg, input_shape), f.IN_FEATURES, f.OUT_CHANNELS, norm=f.NORM,
                   top_block=LastLevelMaxPool(), fuse_type=f.FUSE_TYPE)


@BACKBONE_REGISTRY.register()
def build_sact_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> SACTFPN:
    """SACT / ACT / dense ResNet + FPN with LastLevelP6P7 on res5 (P3-P7), as detectron2's
    build_retinanet_resnet_fpn_backbone."""
    f = cfg.MODEL.FPN
    bottom_up = _bottom_up(cfg, input_shape)
    top = LastLevelP6P7(bottom_up.output_shape()["res5"].channels, f.OUT_CHANNELS)
    return SACTFPN(bottom_up, f.IN_FEATURES, f.OUT_CHANNELS, norm=f.NORM, top_block=top, fuse_type=f.FUSE_TYPE)


def dense_extractor_flops(backbone: nn.Module, hw: Sequence[int]) -> float:
    """FLOPs of ``backbone`` (a ResNet family backbone or a :class:`SACTFPN`) with every unit run, on one image."""
    if isinstance(backbone, SACTFPN):
        return backbone.dense_flops(hw)
    return dense_resnet_flops(backbone, hw)[0]


@functools.lru_cache(maxsize=8)
def _dense_fpn_reference(depth: int, stride_in_1x1: bool, in_features: tuple, retinanet: bool) -> SACTFPN:
    from ...config import get_sact_cfg

    cfg = get_sact_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = stride_in_1x1
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.SACT.MODE = "none"
    cfg.MODEL.FPN.IN_FEATURES = list(in_features)
    build = build_sact_retinanet_resnet_fpn_backbone if retinanet else build_sact_resnet_fpn_backbone
    with torch.device("meta"):
        return build(cfg, ShapeSpec(channels=3))


def dense_fpn_reference_flops(like: SACTFPN, hw: Sequence[int], depth: int = 101, stride_in_1x1: bool = True) -> float:
    """FLOPs of detectron2's default-width dense ResNet-``depth``-FPN extractor (FPN.OUT_CHANNELS 256) with the
    FPN input features and top block of ``like``, on one image of ``hw``."""
    ref = _dense_fpn_reference(int(depth), bool(stride_in_1x1), tuple(like.in_features),
                               isinstance(like.top_block, LastLevelP6P7))
    return ref.dense_flops(hw)
