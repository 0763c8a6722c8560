"""SACT / ACT ResNet backbone: detectron2's ResNet whose chosen stages halt adaptively.

Parameter names are detectron2's (stem.conv1, res2.0.conv1, ...); each unit but the last of an
adaptive stage has an extra ``halting`` submodule. The first unit of a stage runs everywhere; unit
l >= 1 runs where the position has not halted (masked dense path in training, optionally
gather/scatter at inference). With halting disabled the output equals detectron2's ResNet.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, BasicBlock, ResNet
from torch import nn

from ..config.defaults import validate_sact_cfg
from . import sparse
from .act import HaltingState, capturing_graph
from .fold import fold_block, folded_block_forward
from .halting import build_halting

__all__ = ["StagePonder", "SACTStage", "SACTResNet", "build_sact_resnet_backbone"]

_BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
_STAGE_INDEX = {"res2": 0, "res3": 1, "res4": 2, "res5": 3}


@dataclass
class StagePonder:
    """What one adaptive stage did in the last forward (B images, HxW stage output grid).

    ponder_cost: (B,1,H,W) rho = N + R (differentiable through R).
    num_units:   (B,1,H,W) N, units executed per position.
    masks:       for units 1..L-1, (B,1,H,W) bool positions where the unit ran (unit 0 runs everywhere).
    stride:      stride of the stage output w.r.t. the input image.
    """

    ponder_cost: torch.Tensor
    num_units: torch.Tensor
    masks: List[torch.Tensor] = field(default_factory=list)
    stride: int = 1


class SACTStage(nn.Sequential):
    """A ResNet stage (children "0", "1", ... are detectron2 blocks) with adaptive halting.

    forward: x (B,Cin,H,W) -> sum_l p^l x^l (B,Cout,H',W'); records ``self.last`` (StagePonder).
    """

    def __init__(self, blocks: List[nn.Module], mode: str, eps: float, norm: str, kernel_size: int,
                 bias_init: float, stride: int = 1, halting_kwargs: Optional[dict] = None) -> None:
        super().__init__(*blocks)
        self.mode = mode
        self.eps = eps
        self.stride = stride
        self.execution = "dense"
        self.sparse_max_density = 1.0
        self.last: Optional[StagePonder] = None
        # sparse / auto inference only: run unit l >= 1 on replay_masks[l - 1] (B,1,H,W) bool instead of the
        # halting masks (tools/benchmark_sparse.py replays a trained model's masks at other widths)
        self.replay_masks: Optional[List[torch.Tensor]] = None
        for block in blocks[:-1]:
            block.add_module("halting", build_halting(mode, block.out_channels, norm, kernel_size, bias_init,
                                                      **(halting_kwargs or {})))

    def train(self, mode: bool = True) -> "SACTStage":
        sparse.release_folds(self)  # folded (BN-merged) units are only for inference
        return super().train(mode)

    def _sparse_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference with EXECUTION sparse / auto: same function as :meth:`forward`'s masked path.

        The state is kept channels-last inside the stage (the gather kernels then move whole rows
        of C values), units l >= 1 run in place on their active positions (:mod:`.sparse`), the
        halting score is computed only where needed and ``out += p^l x^l`` touches only active
        positions (:mod:`.sparse_halting`). The output has the memory format of the input.
        """
        from .sparse_halting import masked_accumulate_, sparse_halting, supports_sparse_halting

        num, state = len(self), HaltingState(self.eps)
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous() else torch.contiguous_format
        masks: List[torch.Tensor] = []
        x = x.contiguous(memory_format=torch.channels_last)
        x = folded_block_forward(sparse.cached_fold(self[0], fold_block), x)
        per_image = self.sparse_max_density if self.execution == "auto" else 1.0
        out: Optional[torch.Tensor] = None
        active = None
        replay = self.replay_masks
        for index, block in enumerate(self):
            if index > 0:
                active = state.active if replay is None else (replay[index - 1] if index - 1 < len(replay) else None)
                if active is None or not bool(active.any()):
                    break  # every position halted: the remaining units run nowhere
                masks.append(active)
                # per image: gather kernel below the density threshold, dense folded unit above it
                x = sparse.sparse_unit_forward(sparse.cached_fold(block), x, active, max_density=per_image,
                                               inplace=True)
            last = index == num - 1
            h = None
            if not last:  # SACT: the score only where the position is still active (everywhere after unit 0)
                h = sparse_halting(block.halting, x, active) if supports_sparse_halting(block.halting) \
                    else block.halting(x)
            like = x[:, :1, :1, :1] if self.mode == "act" else x[:, :1]
            weight = state.step(h, last=last, like=like)
            if out is None:
                out = (weight * x).contiguous(memory_format=torch.channels_last)
            elif active.shape[2:] == (1, 1):
                out.add_(weight * x)
            else:
                masked_accumulate_(out, weight, x, active)
        self._record(state, masks, x.shape)
        return out.to(x.dtype).contiguous(memory_format=fmt)  # out: accumulated in float32 under autocast

    def _record(self, state: HaltingState, masks: List[torch.Tensor], x_shape: torch.Size) -> None:
        shape = (x_shape[0], 1, x_shape[2], x_shape[3])
        self.last = StagePonder(
            ponder_cost=state.ponder_cost.expand(shape),
            num_units=state.num_units.expand(shape),
            masks=[m.expand(shape) for m in masks],
            stride=self.stride,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Masked dense path: unit l >= 1 runs everywhere and keeps its result where active.

        ``sum_l p^l x^l`` is accumulated in the halting state's dtype (float32 under autocast) and
        returned in the activations' dtype. Under ``torch.jit.trace`` / ``torch.export``
        (:func:`.act.capturing_graph`) every unit runs masked, with no early exit and no sparse path.
        """
        capture = capturing_graph()
        if not self.training and self.execution != "dense" and not capture:
            return self._sparse_forward(x)
        num = len(self)
        state = HaltingState(self.eps)
        out: Optional[torch.Tensor] = None
        masks: List[torch.Tensor] = []
        for index, block in enumerate(self):
            if index == 0:
                x = block(x)  # the first unit runs at every position
            else:
                active = state.active
                if not self.training and not capture and not bool(active.any()):
                    break  # every position halted: the remaining units run nowhere
                # (in training the masked units stay in the graph, so DDP sees every parameter used)
                masks.append(active)
                x = torch.where(active, block(x), x)
            last = index == num - 1
            h = None if last else block.halting(x)
            like = x[:, :1, :1, :1] if self.mode == "act" else x[:, :1]
            weight = state.step(h, last=last, like=like)
            out = weight * x if out is None else out + weight * x
        self._record(state, masks, x.shape)
        return out.to(x.dtype)


def freeze_except(module: nn.Module, keep: Sequence[str] = ("halting",)) -> None:
    """Freeze a stem/unit like detectron2's CNNBlockBase.freeze (no grads, BN -> FrozenBN), except the
    children named in ``keep`` (by default the halting branch, which FREEZE_AT never freezes)."""
    for name, child in module.named_children():
        if name in keep:
            continue
        for p in child.parameters():
            p.requires_grad = False
        frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(child)
        if frozen is not child:
            setattr(module, name, frozen)
    for p in module.parameters(recurse=False):
        p.requires_grad = False


class SACTResNet(ResNet):
    """detectron2 ResNet with SACT/ACT stages. ``last_ponder`` maps stage name -> StagePonder."""

    def __init__(self, stem: nn.Module, stages: List[List[nn.Module]], *, out_features: List[str], freeze_at: int,
                 mode: str, adaptive_stages: List[str], eps: float, halt_norm: str, halt_kernel_size: int,
                 halt_bias_init: float, execution: str = "dense", sparse_max_density: float = 1.0,
                 halting_kwargs: Optional[dict] = None) -> None:
        super().__init__(stem, stages, out_features=out_features, freeze_at=0)
        self.mode = mode
        self.adaptive_stages = [] if mode == "none" else list(adaptive_stages)
        for name in self.adaptive_stages:
            if name not in self.stage_names:
                raise ValueError(
                    f"cfg.MODEL.SACT.STAGES names {name!r}, which this backbone does not build "
                    f"(it has {list(self.stage_names)} for OUT_FEATURES={list(out_features)})"
                )
        stage_list = list(self.stages)
        for i, name in enumerate(self.stage_names):
            if name in self.adaptive_stages:
                old = getattr(self, name)
                new = SACTStage(list(old), mode, eps, halt_norm, halt_kernel_size, halt_bias_init,
                                stride=self._out_feature_strides[name], halting_kwargs=halting_kwargs)
                new.execution, new.sparse_max_density = execution, sparse_max_density
                setattr(self, name, new)
                stage_list[i] = new
        self.stages = stage_list
        self.freeze(freeze_at)

    @property
    def last_ponder(self) -> Dict[str, StagePonder]:
        """Per adaptive stage, what the last forward did (empty for MODE none)."""
        return {n: getattr(self, n).last for n in self.adaptive_stages if getattr(self, n).last is not None}

    def train(self, mode: bool = True) -> "SACTResNet":
        sparse.release_folds(self.stem)  # the stages release their own folds
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """detectron2's ResNet forward; x (B,3,H,W) -> {name: (B,C,H/s,W/s)} (NCHW-contiguous).

        At inference with a sparse / auto execution the stem and the stages run channels-last with
        BN folded into the convs (the gather kernels need channels-last states; converting the
        3-channel input is cheap), and the outputs are converted back.
        """
        if self.training or capturing_graph() or all(getattr(self, n).execution == "dense"
                                                     for n in self.adaptive_stages):
            return super().forward(x)
        x = x.contiguous(memory_format=torch.channels_last)
        x = folded_block_forward(sparse.cached_fold(self.stem, fold_block), x)
        outputs = {"stem": x} if "stem" in self._out_features else {}
        for name, stage in zip(self.stage_names, self.stages):
            x = stage(x)
            if name in self._out_features:
                outputs[name] = x
        if self.num_classes is not None:
            x = self.linear(torch.flatten(self.avgpool(x), 1))
            if "linear" in self._out_features:
                outputs["linear"] = x
        return {k: v.contiguous() for k, v in outputs.items()}

    def set_execution(self, execution: str, sparse_max_density: Optional[float] = None) -> None:
        """Switch the inference path of every adaptive stage: dense | sparse | auto."""
        for name in self.adaptive_stages:
            stage = getattr(self, name)
            stage.execution = execution
            if sparse_max_density is not None:
                stage.sparse_max_density = sparse_max_density

    def freeze(self, freeze_at: int = 0) -> "SACTResNet":
        """Freeze the stem (freeze_at >= 1) and the first freeze_at - 1 stages; halting stays trainable."""
        if freeze_at >= 1:
            freeze_except(self.stem)
        for idx, stage in enumerate(self.stages, start=2):
            if freeze_at >= idx:
                for block in stage.children():
                    freeze_except(block)
        return self

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return super().output_shape()


def make_resnet_stages(cfg, input_channels: int):
    """detectron2's stem and stage blocks from cfg.MODEL.RESNETS (same construction as its builder)."""
    r = cfg.MODEL.RESNETS
    depth = r.DEPTH
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"cfg.MODEL.RESNETS.DEPTH must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}")
    if any(r.DEFORM_ON_PER_STAGE):
        raise ValueError("cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE is not supported by the SACT backbone")
    stem = BasicStem(in_channels=input_channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM)
    in_ch, out_ch = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
    bottleneck = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    if depth in (18, 34) and out_ch != 64:
        raise ValueError("cfg.MODEL.RESNETS.RES2_OUT_CHANNELS must be 64 for R18/R34")
    stages = []
    for idx, num_blocks in enumerate(_BLOCKS_PER_STAGE[depth]):
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


@BACKBONE_REGISTRY.register()
def build_sact_resnet_backbone(cfg, input_shape: ShapeSpec) -> SACTResNet:
    """SACT / ACT / dense ResNet from cfg.MODEL.RESNETS and cfg.MODEL.SACT."""
    validate_sact_cfg(cfg)
    s = cfg.MODEL.SACT
    if s.VARIANT == "original":  # the original SACT code's pre-activation ResNet v2 (blocks 1-3 in a C4 detector)
        from .original_resnet import build_original_resnet_v2_backbone

        return build_original_resnet_v2_backbone(cfg, input_shape)
    stem, stages = make_resnet_stages(cfg, input_shape.channels)
    return SACTResNet(
        stem, stages, out_features=list(cfg.MODEL.RESNETS.OUT_FEATURES), freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        mode=s.MODE, adaptive_stages=list(s.STAGES), eps=float(s.EPS), halt_norm=s.HALT_NORM,
        halt_kernel_size=int(s.HALT_KERNEL_SIZE), halt_bias_init=float(s.HALT_BIAS_INIT),
        execution=s.EXECUTION, sparse_max_density=float(s.SPARSE_MAX_DENSITY), halting_kwargs={"init": s.HALT_INIT},
    )
