"""Exact per-image FLOPs of a (SACT) ResNet from the masks it actually used.

Convention (as the original SACT code counts): a conv costs 2 * out_positions * C_out * k*k * C_in / groups; BN,
activations, pooling and biases are free; stem, projection shortcuts and halting convs count.
Unit 0 of a stage runs everywhere; for unit l >= 1 the first conv runs on the 3x3-dilated active
mask and every other conv (and the halting branch computed from the unit's output) on the mask.
Counting is per image on its own (unpadded) area: the valid output size of every conv follows
conv arithmetic from the image size, and masks are cropped to it.
"""
import functools
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling.backbone.resnet import BasicStem
from torch import nn

from .backbone import SACTResNet, StagePonder, make_resnet_stages
from .halting import GlobalHalting, SpatialHalting

__all__ = ["stage_flops", "stem_flops", "conv_flops", "backbone_flops", "dense_backbone_flops", "dilate", "conv_out_hw",
           "HookFlopCounter"]

HW = Tuple[int, int]


def conv_out_hw(conv: nn.Conv2d, hw: HW) -> HW:
    """Output size of ``conv`` on an input of size ``hw`` (standard conv arithmetic; ceil(n / s) for
    convs with TF 'SAME' padding, marked ``tf_same``)."""
    out = []
    for i, n in enumerate(hw):
        k, s, p, d = conv.kernel_size[i], conv.stride[i], conv.padding[i], conv.dilation[i]
        out.append(-(-n // s) if getattr(conv, "tf_same", False) else (n + 2 * p - d * (k - 1) - 1) // s + 1)
    return out[0], out[1]


def stem_flops(stem: nn.Module, hw: HW) -> Tuple[float, HW]:
    """FLOPs of the stem conv ``stem.conv1`` and the stem's output size.

    Pooling is free: detectron2's BasicStem ends in a 3x3/2 max pool with pad 1, the original v2
    stem in a TF 'SAME' 3x3/2 max pool (``stem.pool.out_hw``: ceil(n/2)); CIFAR stems have none.
    """
    hw = conv_out_hw(stem.conv1, hw)
    flops = conv_flops(stem.conv1, hw[0] * hw[1])
    if isinstance(stem, BasicStem):
        hw = ((hw[0] + 2 - 3) // 2 + 1, (hw[1] + 2 - 3) // 2 + 1)
    elif hasattr(getattr(stem, "pool", None), "out_hw"):
        hw = stem.pool.out_hw(hw)
    elif getattr(stem, "stride", None) != stem.conv1.stride[0]:  # a stem without pooling is its conv
        raise TypeError(f"no FLOP rule for stem {type(stem).__name__}")
    return flops, hw


def conv_flops(conv: nn.Conv2d, positions: float) -> float:
    """FLOPs of ``conv`` evaluated at ``positions`` output positions (1 multiply-add = 2 FLOPs)."""
    k = conv.kernel_size[0] * conv.kernel_size[1]
    return 2.0 * float(positions) * conv.out_channels * k * conv.in_channels / conv.groups


def dilate(mask: torch.Tensor) -> torch.Tensor:
    """3x3 dilation of a bool mask (...,H,W) -> same shape (positions whose 3x3 neighbour is active)."""
    m = mask.float().reshape(-1, 1, *mask.shape[-2:])
    return (F.max_pool2d(m, 3, stride=1, padding=1) > 0).reshape(mask.shape)


def _unit_convs(block: nn.Module) -> List[nn.Conv2d]:
    """The main-path convs of a detectron2 Basic/Bottleneck block, in execution order."""
    return [getattr(block, n) for n in ("conv1", "conv2", "conv3") if hasattr(block, n)]


def _halting_flops(halting: Optional[nn.Module], positions: float) -> float:
    if halting is None:
        return 0.0
    if isinstance(halting, SpatialHalting):
        return conv_flops(halting.local_conv, positions) + conv_flops(halting.global_conv, 1)
    if isinstance(halting, GlobalHalting):
        return conv_flops(halting.global_conv, 1)
    raise TypeError(f"unknown halting branch {type(halting).__name__}")


def _dense_unit(block: nn.Module, hw: HW) -> Tuple[float, HW]:
    flops, cur = 0.0, hw
    for conv in _unit_convs(block):
        cur = conv_out_hw(conv, cur)
        flops += conv_flops(conv, cur[0] * cur[1])
    if block.shortcut is not None:
        flops += conv_flops(block.shortcut, cur[0] * cur[1])
    return flops, cur


def _idle_halting_flops(stage: nn.Module, block: nn.Module) -> float:
    """FLOPs of a unit that ran at no position of the image: 0, except in the original SACT code
    (stage marked ``count_idle_global_halting``), which runs every unit and counts the unmasked
    global halting conv (2*C) of a SACT halting branch."""
    halting = getattr(block, "halting", None)
    if getattr(stage, "count_idle_global_halting", False) and isinstance(halting, SpatialHalting):
        return conv_flops(halting.global_conv, 1)
    return 0.0


def stage_flops(stage: nn.Module, hw: HW, ponder: Optional[StagePonder], index: int) -> Tuple[float, HW]:
    """FLOPs of one stage for image ``index``; ``ponder`` None means a dense stage."""
    flops, hw = _dense_unit(stage[0], hw)  # unit 0 runs everywhere
    num_pos = hw[0] * hw[1]
    if ponder is not None:
        flops += _halting_flops(getattr(stage[0], "halting", None), num_pos)
    for l in range(1, len(stage)):
        block = stage[l]
        if ponder is None:
            flops += _dense_unit(block, hw)[0]
            continue
        if l - 1 >= len(ponder.masks):  # every position had halted: the unit ran nowhere
            flops += _idle_halting_flops(stage, block)
            continue
        mask = ponder.masks[l - 1][index, 0]
        active = mask[: hw[0], : hw[1]]
        n_active = float(active.sum())
        if n_active == 0:
            flops += _idle_halting_flops(stage, block)
            continue
        n_dilated = float(dilate(mask)[: hw[0], : hw[1]].sum())
        convs = _unit_convs(block)
        flops += conv_flops(convs[0], n_dilated) + sum(conv_flops(c, n_active) for c in convs[1:])
        flops += _halting_flops(getattr(block, "halting", None), n_active)
    return flops, hw


def backbone_flops(backbone: SACTResNet, image_hw: Sequence[int], index: int = 0,
                   ponder: Optional[Dict[str, StagePonder]] = None) -> float:
    """FLOPs of the feature extractor on image ``index`` of the last batch, of size ``image_hw``.

    ``ponder`` defaults to ``backbone.last_ponder``; adaptive stages without a record count as dense.
    """
    ponder = backbone.last_ponder if ponder is None else ponder
    flops, hw = stem_flops(backbone.stem, (int(image_hw[0]), int(image_hw[1])))
    for name, stage in zip(backbone.stage_names, backbone.stages):
        f, hw = stage_flops(stage, hw, ponder.get(name), index)
        flops += f
    return flops


@functools.lru_cache(maxsize=16)
def _dense_reference(depth: int, out_feature: str, stride_in_1x1: bool, variant: str = "detectron2") -> SACTResNet:
    from ..config import get_sact_cfg

    cfg = get_sact_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.OUT_FEATURES = [out_feature]
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = stride_in_1x1
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    with torch.device("meta"):
        if variant == "original":  # the original SACT code's pre-activation ResNet v2
            from .original_resnet import STANDARD_UNITS, V2Stem, make_v2_stages

            if depth not in STANDARD_UNITS:
                raise ValueError(f"no original ResNet v2 of depth {depth} (one of {sorted(STANDARD_UNITS)})")
            stem, stages = V2Stem(3), make_v2_stages(STANDARD_UNITS[depth])
        elif variant == "detectron2":
            stem, stages = make_resnet_stages(cfg, 3)
        else:
            raise ValueError(f"unknown ResNet variant {variant!r} (detectron2 or original)")
        return SACTResNet(stem, stages, out_features=[out_feature], freeze_at=0, mode="none", adaptive_stages=[],
                          eps=0.01, halt_norm="", halt_kernel_size=3, halt_bias_init=-3.0)


def dense_backbone_flops(image_hw: Sequence[int], depth: int = 101, out_feature: str = "res4",
                         stride_in_1x1: bool = True, variant: str = "detectron2") -> float:
    """FLOPs of the dense ResNet-``depth`` extractor up to ``out_feature`` on one image of ``image_hw``
    (``variant`` "original": the original SACT code's ResNet v2; stride_in_1x1 then does not apply)."""
    if variant == "original":
        stride_in_1x1 = False
    return backbone_flops(_dense_reference(depth, out_feature, stride_in_1x1, variant), image_hw, ponder={})


class HookFlopCounter:
    """Dense FLOPs of every nn.Conv2d / nn.Linear inside ``modules`` while the context is open.

    Counts from the actual output shapes (whole batch): conv 2 * out.numel() * k*k * C_in / groups,
    linear 2 * out.numel() * in_features.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = [m for m in modules if m is not None]
        self.total = 0.0
        self._handles: list = []

    def _hook(self, module: nn.Module, inputs, output) -> None:
        if not isinstance(output, torch.Tensor):
            return
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            self.total += 2.0 * output.numel() * k * module.in_channels / module.groups
        elif isinstance(module, nn.Linear):
            self.total += 2.0 * output.numel() * module.in_features

    def __enter__(self) -> "HookFlopCounter":
        for root in self.modules:
            for m in root.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    self._handles.append(m.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
