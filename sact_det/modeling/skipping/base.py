"""Shared machinery of the per-image unit-skipping ResNets (ConvNet-AIG, BlockDrop).

:class:`UnitSkippingResNet` is detectron2's ResNet (same parameter names: stem.conv1,
res2.0.conv1, ...) whose chosen residual units ("res3.1", ...) run or are skipped per image.
Subclasses decide *which* images run a unit (``_decide``) and how a unit is combined in training
(``_train_unit``); this module owns per-image execution at inference (a skipped unit is not
computed for that image), the per-image FLOP count and the per-image policy record.

Skip rule: a skipped unit outputs its shortcut (identity, or the projection conv for the first
unit of a stage); ConvNet-AIG applies a ReLU after a projection, BlockDrop does not (as the
originals do). FLOPs (as the original SACT code counts): 2 * positions * C_out * k*k * C_in / groups per conv, convs
and fully-connected layers only; an executed unit costs all its convs, a skipped one only its
projection shortcut.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling.backbone.resnet import ResNet
from torch import nn

from ...config.constants import STAGE_ORDER
from ..core.contract import AdaptiveBackbone
from ..core.flop_rules import stem_flops, unit_flops

__all__ = ["residual_branch", "shortcut_branch", "execute_per_image", "pool_valid", "UnitSkippingResNet",
           "built_stage_sizes", "check_stage_list"]


def residual_branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Main path of a detectron2 Basic/Bottleneck block before the addition: (B,Cin,H,W) -> (B,Cout,H',W')."""
    out = F.relu_(block.conv1(x))
    if hasattr(block, "conv3"):
        out = F.relu_(block.conv2(out))
        return block.conv3(out)
    return block.conv2(out)


def shortcut_branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's shortcut: its projection conv (+norm) or the identity."""
    return x if block.shortcut is None else block.shortcut(x)


def skip_output(block: nn.Module, x: torch.Tensor, relu_projection: bool) -> torch.Tensor:
    """Output of a skipped unit: x, or the projection shortcut (ReLU'd if ``relu_projection``)."""
    if block.shortcut is None:
        return x
    out = block.shortcut(x)
    return F.relu(out) if relu_projection else out


def execute_per_image(block: nn.Module, x: torch.Tensor, executed: torch.Tensor, relu_projection: bool) -> torch.Tensor:
    """Inference: run ``block`` only on the images with ``executed`` (B,) True, skip it on the others."""
    n_on = int(executed.sum())
    if n_on == x.shape[0]:
        return block(x)
    if n_on == 0:
        return skip_output(block, x, relu_projection)
    on = executed.nonzero().squeeze(1)
    off = (~executed).nonzero().squeeze(1)
    y_on = block(x[on])
    y_off = skip_output(block, x[off], relu_projection)
    out = y_on.new_empty((x.shape[0],) + tuple(y_on.shape[1:]))
    out[on] = y_on
    out[off] = y_off
    return out


def pool_valid(x: torch.Tensor, image_sizes: Optional[Sequence[Sequence[int]]], stride: int) -> torch.Tensor:
    """Global average over each image's own (unpadded) area: (B,C,H,W) -> (B,C).

    ``image_sizes`` are the input images' (h, w) before batch padding; ``stride`` is the stride of
    ``x`` w.r.t. the input. ``None`` averages over the whole map.
    """
    if image_sizes is None:
        return x.mean(dim=(2, 3))
    b, _, h, w = x.shape
    if len(image_sizes) != b:
        raise ValueError(f"pool_valid: {len(image_sizes)} image sizes for a batch of {b}")
    mask = torch.zeros((b, 1, h, w), dtype=x.dtype, device=x.device)
    for i, (ih, iw) in enumerate(image_sizes):
        mask[i, :, : max(1, math.ceil(ih / stride)), : max(1, math.ceil(iw / stride))] = 1
    return (x * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3))


def built_stage_sizes(stages: Sequence[Sequence[nn.Module]], out_features: Sequence[str]) -> Dict[str, int]:
    """Stage name -> number of units, for the stages detectron2's ResNet keeps for ``out_features``."""
    order = STAGE_ORDER
    n = max([order.index(f) + 1 for f in out_features if f in order] or [len(stages)])
    return {name: len(units) for name, units in zip(order[:n], stages)}


def check_stage_list(key: str, wanted: Sequence[str], built: Dict[str, int]) -> List[str]:
    """``wanted`` in ResNet order; ValueError naming ``key`` when empty, duplicated or not built."""
    bad = [s for s in wanted if s not in built]
    if not wanted or bad or len(set(wanted)) != len(wanted):
        raise ValueError(f"{key} must be a non-empty list of distinct stages among {list(built)} (the stages built "
                         f"for these OUT_FEATURES), got {list(wanted)}")
    return [s for s in built if s in wanted]


class UnitSkippingResNet(ResNet, AdaptiveBackbone):
    """detectron2 ResNet whose units in ``skip_stages`` run per image; see the module docstring.

    After each forward: ``last_executed`` maps unit name ("res3.1") -> (B,) bool, for every unit of
    ``skip_stages`` in execution order (always-run units are all True). Contract
    (:class:`AdaptiveBackbone`): ``image_flops`` counts the units each image ran plus the gates /
    policy (``extra_flops``), ``image_outputs`` -> {"unit_policy": {unit: ran}}, ``log_statistics``
    -> units/used_mean, units/used_fraction; dense execution only.
    """

    family = "dense"  # set by the subclasses: "aig" | "blockdrop"
    relu_projection = False  # ReLU after a skipped unit's projection shortcut (AIG: True)

    def __init__(self, stem: nn.Module, stages: List[List[nn.Module]], *, out_features: List[str],
                 skip_stages: Sequence[str]) -> None:
        super().__init__(stem, stages, out_features=out_features, freeze_at=0)
        bad = [s for s in skip_stages if s not in self.stage_names]
        if bad:
            raise ValueError(f"stages {bad} are not built by this backbone (it has {list(self.stage_names)} "
                             f"for OUT_FEATURES={list(out_features)})")
        self.skip_stages = [s for s in self.stage_names if s in skip_stages]
        self.unit_names: List[str] = [f"{s}.{j}" for s in self.skip_stages for j in range(len(getattr(self, s)))]
        self.last_executed: Dict[str, torch.Tensor] = {}

    # -- subclass hooks -------------------------------------------------------------------------
    def _decide(self, name: str, block: nn.Module, x: torch.Tensor, stride: int) -> Optional[torch.Tensor]:
        """(B,) bool: which images run unit ``name`` at inference (None: all)."""
        raise NotImplementedError

    def _train_unit(self, name: str, block: nn.Module, x: torch.Tensor, stride: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Training forward of unit ``name``: (output, (B,) bool executed)."""
        raise NotImplementedError

    def extra_flops(self, index: int) -> float:
        """FLOPs of the gates / policy for image ``index`` of the last batch."""
        return 0.0

    # -- forward --------------------------------------------------------------------------------
    def _unit_input_strides(self, name: str) -> List[int]:
        stage = getattr(self, name)
        out_stride = self._out_feature_strides[name]
        first = out_stride // int(stage[0].stride)
        return [first] + [out_stride] * (len(stage) - 1)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        assert x.dim() == 4, f"{type(self).__name__} takes (N,C,H,W), got {tuple(x.shape)}"
        self._record_input(x)
        outputs: Dict[str, torch.Tensor] = {}
        executed: Dict[str, torch.Tensor] = {}
        x = self.stem(x)
        for name, stage in zip(self.stage_names, self.stages):
            if name not in self.skip_stages:
                x = stage(x)
            else:
                for j, (block, stride) in enumerate(zip(stage, self._unit_input_strides(name))):
                    unit = f"{name}.{j}"
                    if self.training:
                        x, ran = self._train_unit(unit, block, x, stride)
                    else:
                        ran = self._decide(unit, block, x, stride)
                        if ran is None:
                            ran = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
                        x = execute_per_image(block, x, ran, self.relu_projection)
                    executed[unit] = ran.detach().bool()
            if name in self._out_features:
                outputs[name] = x
        self.last_executed = executed
        return outputs

    # -- contract -------------------------------------------------------------------------------
    def image_outputs(self, index: int) -> Dict[str, Dict[str, bool]]:
        """{"unit_policy": {unit name: executed}} of image ``index`` (ordered like ``unit_names``)."""
        return {"unit_policy": {n: bool(self.last_executed[n][index]) for n in self.unit_names}}

    def log_statistics(self) -> Dict[str, float]:
        """units/used_mean (units run per image) and units/used_fraction over the last batch."""
        if not self.last_executed:
            return {}
        used = torch.stack([e.float() for e in self.last_executed.values()], dim=1).sum(1)
        return {"units/used_mean": float(used.mean()),
                "units/used_fraction": float(used.mean()) / len(self.last_executed)}

    def image_stage_flops(self, image_hw: Sequence[int], index: int = 0) -> Dict[str, float]:
        """{"stem", <stage>..., "extra" (gates / policy)}: FLOPs of image ``index`` of the last forward
        on an input of ``image_hw``."""
        out: Dict[str, float] = {}
        out["stem"], hw = stem_flops(self.stem, (int(image_hw[0]), int(image_hw[1])))
        for name, stage in zip(self.stage_names, self.stages):
            out[name] = 0.0
            for j, block in enumerate(stage):
                ran = self.last_executed.get(f"{name}.{j}")
                f, hw = unit_flops(block, hw, executed=True if ran is None else bool(ran[index]))
                out[name] += f
        out["extra"] = self.extra_flops(index)
        return out

    def image_flops(self, index: int) -> float:
        """Backbone FLOPs of image ``index`` of the last forward on its own (unpadded) size."""
        return sum(self.image_stage_flops(self.image_size(index), index).values())

    def freeze(self, freeze_at: int = 0) -> "UnitSkippingResNet":
        """Freeze the stem (freeze_at >= 1) and the first freeze_at - 1 stages; gates stay trainable."""
        return AdaptiveBackbone.freeze(self, freeze_at)
