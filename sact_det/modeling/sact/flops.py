"""Exact per-image FLOPs of a SACT / ACT ResNet from the masks it actually used.

The convolution rules are :mod:`.flop_rules` (2 * out_positions * C_out * k*k * C_in / groups per conv;
stem, projection shortcuts and halting convs count). Unit 0 of a stage runs everywhere; for unit
l >= 1 the first conv runs on the 3x3-dilated active mask and every other conv (and the halting
branch computed from the unit's output) on the mask. Counting is per image on its own (unpadded)
area: the valid output size of every conv follows conv arithmetic from the image size, and masks
are cropped to it.
"""
import functools
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple

import torch
from detectron2.modeling.backbone.resnet import ResNet
from torch import nn

from ..core.flop_rules import HW, conv_flops, dense_resnet_flops, dilate, stem_flops, unit_convs, unit_flops
from ..halting.branches import GlobalHalting, SpatialHalting

if TYPE_CHECKING:  # the SACT backbone imports this module
    from .backbone import StagePonder

__all__ = ["stage_flops", "backbone_flops", "dense_backbone_flops"]


def _halting_flops(halting: Optional[nn.Module], positions: float) -> float:
    if halting is None:
        return 0.0
    if isinstance(halting, SpatialHalting):
        return conv_flops(halting.local_conv, positions) + conv_flops(halting.global_conv, 1)
    if isinstance(halting, GlobalHalting):
        return conv_flops(halting.global_conv, 1)
    raise TypeError(f"unknown halting branch {type(halting).__name__}")


def _idle_halting_flops(stage: nn.Module, block: nn.Module) -> float:
    """FLOPs of a unit that ran at no position of the image: 0, except in the original SACT code
    (stage marked ``count_idle_global_halting``), which runs every unit and counts the unmasked
    global halting conv (2*C) of a SACT halting branch."""
    halting = getattr(block, "halting", None)
    if getattr(stage, "count_idle_global_halting", False) and isinstance(halting, SpatialHalting):
        return conv_flops(halting.global_conv, 1)
    return 0.0


def stage_flops(stage: nn.Module, hw: HW, ponder: Optional["StagePonder"], index: int) -> Tuple[float, HW]:
    """FLOPs of one stage for image ``index``; ``ponder`` None means a dense stage."""
    flops, hw = unit_flops(stage[0], hw)  # unit 0 runs everywhere
    num_pos = hw[0] * hw[1]
    if ponder is not None:
        flops += _halting_flops(getattr(stage[0], "halting", None), num_pos)
    counts = []  # (active, dilated) positions of units 1.. on the image: one host transfer per stage
    if ponder is not None and ponder.masks:
        m = torch.stack([mk[index, 0] for mk in ponder.masks[: len(stage) - 1]])  # (n, Hs, Ws)
        counts = torch.stack([m[:, : hw[0], : hw[1]].sum((1, 2)), dilate(m)[:, : hw[0], : hw[1]].sum((1, 2))],
                             1).tolist()
    for l in range(1, len(stage)):
        block = stage[l]
        if ponder is None:
            flops += unit_flops(block, hw)[0]
            continue
        n_active, n_dilated = counts[l - 1] if l - 1 < len(counts) else (0, 0)
        if n_active == 0:  # every position had halted, or none was active: the unit ran nowhere
            flops += _idle_halting_flops(stage, block)
            continue
        convs = unit_convs(block)
        flops += conv_flops(convs[0], n_dilated) + sum(conv_flops(c, n_active) for c in convs[1:])
        flops += _halting_flops(getattr(block, "halting", None), n_active)
    return flops, hw


def backbone_flops(backbone: nn.Module, image_hw: Sequence[int], index: int = 0,
                   ponder: Optional[Dict[str, "StagePonder"]] = None) -> float:
    """FLOPs of a SACT ResNet's feature extractor on image ``index`` of the last batch, of size ``image_hw``.

    ``ponder`` defaults to ``backbone.last_ponder``; adaptive stages without a record count as dense.
    """
    ponder = backbone.last_ponder if ponder is None else ponder
    flops, hw = stem_flops(backbone.stem, (int(image_hw[0]), int(image_hw[1])))
    for name, stage in zip(backbone.stage_names, backbone.stages):
        f, hw = stage_flops(stage, hw, ponder.get(name), index)
        flops += f
    return flops


@functools.lru_cache(maxsize=16)
def _dense_reference(depth: int, out_feature: str, stride_in_1x1: bool, variant: str = "detectron2") -> ResNet:
    from ...config import get_sact_cfg
    from ..core.resnets import make_resnet_stages

    cfg = get_sact_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.OUT_FEATURES = [out_feature]
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = stride_in_1x1
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    with torch.device("meta"):
        if variant == "original":  # the original SACT code's pre-activation ResNet v2
            from ..original.resnet import STANDARD_UNITS, V2Stem, make_v2_stages

            if depth not in STANDARD_UNITS:
                raise ValueError(f"no original ResNet v2 of depth {depth} (one of {sorted(STANDARD_UNITS)})")
            stem, stages = V2Stem(3), make_v2_stages(STANDARD_UNITS[depth])
        elif variant == "detectron2":
            stem, stages = make_resnet_stages(cfg, 3)
        else:
            raise ValueError(f"unknown ResNet variant {variant!r} (detectron2 or original)")
        return ResNet(stem, stages, out_features=[out_feature])


def dense_backbone_flops(image_hw: Sequence[int], depth: int = 101, out_feature: str = "res4",
                         stride_in_1x1: bool = True, variant: str = "detectron2") -> float:
    """FLOPs of the dense ResNet-``depth`` extractor up to ``out_feature`` on one image of ``image_hw``
    (``variant`` "original": the original SACT code's ResNet v2; stride_in_1x1 then does not apply)."""
    if variant == "original":
        stride_in_1x1 = False
    return dense_resnet_flops(_dense_reference(depth, out_feature, stride_in_1x1, variant), image_hw)[0]
