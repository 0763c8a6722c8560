"""SACT / ACT ResNet backbone: detectron2's ResNet whose chosen stages halt adaptively.

Parameter names are detectron2's (stem.conv1, res2.0.conv1, ...); each unit but the last of an
adaptive stage has an extra ``halting`` submodule. The first unit of a stage runs everywhere; unit
l >= 1 runs where the position has not halted (masked dense path in training, optionally
gather/scatter at inference). With halting disabled the output equals detectron2's ResNet.
"""
import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, ResNet
from torch import nn

from ...config.constants import EXECUTION_MODES, sparse_max_density
from ...config.defaults import validate_sact_cfg
from ..core.contract import AdaptiveBackbone
from ..core.ponder_maps import sum_ponder_maps
from ..core.resnets import make_resnet_stages
from ..execution import sparse
from ..execution.fold import dense_folded_forward, fold_block
from ..execution.gather import MapStats
from ..halting.branches import build_halting
from ..halting.state import HaltingState, capturing_graph
from .flops import backbone_flops

__all__ = ["StagePonder", "SACTStage", "SACTResNet", "build_sact_resnet_backbone", "valid_mask", "ponder_loss",
           "make_resnet_stages"]


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
        self.recompute_frozen = True  # see recomputes()
        self.last: Optional[StagePonder] = None
        # set only by SACTResNet.replay_masks (sparse / auto inference): unit l >= 1 runs on [l - 1] instead
        self._replay: Optional[List[torch.Tensor]] = None
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
        from ..execution.sparse_halting import (SparseHaltingState, masked_accumulate_, sparse_halting,
                                                supports_sparse_halting)

        num, state = len(self), SparseHaltingState(self.eps)
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous() else torch.contiguous_format
        masks: List[torch.Tensor] = []
        x = x.contiguous(memory_format=torch.channels_last)
        x = dense_folded_forward(sparse.cached_fold(self[0], fold_block), x)
        per_image = sparse_max_density(self.sparse_max_density, x.shape[1]) if self.execution == "auto" else 1.0
        out: Optional[torch.Tensor] = None
        active, density = None, None
        # per-channel sums of the state kept across units (the halting statistics; updated by the native kernels)
        stats = MapStats(x.shape[0], x.shape[1]) if x.device.type == "cpu" else None
        replay = self._replay
        for index, block in enumerate(self):
            if index > 0:
                active = state.active if replay is None else (replay[index - 1] if index - 1 < len(replay) else None)
                density = None if active is None else sparse.active_density(active)  # the unit's one host sync
                if density is None or not any(density):
                    break  # every position halted: the remaining units run nowhere
                masks.append(active)
                # per image: gather kernel below the density threshold, dense folded unit above it
                x = sparse.sparse_unit_forward(sparse.cached_fold(block), x, active, max_density=per_image,
                                               inplace=True, density=density, stats=stats)
            last = index == num - 1
            h = None
            if not last:  # SACT: the score only where the position is still active (everywhere after unit 0)
                h = sparse_halting(block.halting, x, active, density, stats) if supports_sparse_halting(block.halting) \
                    else block.halting(x)
            like = x[:, :1, :1, :1] if self.mode == "act" else x[:, :1]
            weight = state.step(h, last=last, like=like)
            if out is None:
                out = (weight * x).contiguous(memory_format=torch.channels_last)
            elif active.shape[2:] == (1, 1):
                out.add_(weight * x)
            else:
                masked_accumulate_(out, weight, x, active, density=density)
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
        Training a frozen stage (:meth:`recomputes`): the stage runs under activation checkpointing.
        """
        capture = capturing_graph()
        if not self.training and self.execution != "dense" and not capture:
            return self._sparse_forward(x)
        if not capture and self.recomputes(x):
            return torch.utils.checkpoint.checkpoint(self._masked_forward, x, use_reentrant=False)
        return self._masked_forward(x)

    def recomputes(self, x: torch.Tensor) -> bool:
        """Whether this training forward recomputes the stage in backward: its units are frozen and x needs no
        gradient (e.g. res2 with FREEZE_AT 2), so only the halting branches train, and their gradients need
        every unit's output x^l (the halting input and the weight of p^l). Kept for backward, those are a map
        per unit where the dense frozen stage keeps nothing; recomputed from x, they cost one map (x) and
        the units' forward once more. Not with a BatchNorm halting norm in training mode (recomputing would
        update its running statistics twice). ``recompute_frozen = False`` turns it off."""
        if not (self.recompute_frozen and self.training and torch.is_grad_enabled()) or x.requires_grad:
            return False
        if any(p.requires_grad for n, p in self.named_parameters() if ".halting." not in f".{n}"):
            return False
        return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in self.modules())

    def _masked_forward(self, x: torch.Tensor) -> torch.Tensor:
        capture = capturing_graph()
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
                x = masked_unit(block, x, active)
            last = index == num - 1
            h = None if last else block.halting(x)
            like = x[:, :1, :1, :1] if self.mode == "act" else x[:, :1]
            weight = state.step(h, last=last, like=like)
            out = weight * x if out is None else torch.addcmul(out, weight, x)
        self._record(state, masks, x.shape)
        return out.to(x.dtype)


def masked_unit(block: nn.Module, x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """``torch.where(active, block(x), x)`` for a unit l >= 1 (identity shortcut); x (B,C,H,W), active (B,1,H,W).

    For detectron2's Bottleneck / Basic blocks it is computed as ``relu(where(active, z, x))`` with z the
    pre-activation (conv_last(...) + x): equal, since x >= 0 (the previous unit's ReLU output), with the
    same parameter gradients (where x = 0 the ReLU that made x passes no gradient anyway), but autograd
    keeps one map per unit instead of two (the unit's output and its masked copy).
    """
    if isinstance(block, (BottleneckBlock, BasicBlock)) and block.shortcut is None:
        convs = [block.conv1, block.conv2] + ([block.conv3] if isinstance(block, BottleneckBlock) else [])
        h = x
        for conv in convs[:-1]:
            h = F.relu_(conv(h))
        return F.relu_(torch.where(active, convs[-1](h).add_(x), x))
    return torch.where(active, block(x), x)


def valid_mask(ponder: StagePonder, image_sizes: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B,1,H,W) bool: the stage positions that lie on each image (not on batch padding)."""
    b, _, h, w = ponder.ponder_cost.shape
    mask = torch.zeros((b, 1, h, w), dtype=torch.bool, device=ponder.ponder_cost.device)
    for i, (ih, iw) in enumerate(image_sizes):
        mask[i, :, : math.ceil(ih / ponder.stride), : math.ceil(iw / ponder.stride)] = True
    return mask


def ponder_loss(ponders: Dict[str, StagePonder], tau: float,
                image_sizes: Optional[Sequence[Sequence[int]]] = None) -> torch.Tensor:
    """tau * sum over stages of mean(rho) over the batch's image positions (padding excluded when
    ``image_sizes``, the unpadded (h, w) of each image, are given)."""
    total = None
    for p in ponders.values():
        rho = p.ponder_cost
        if image_sizes is not None:
            m = valid_mask(p, image_sizes).to(rho.dtype)
            mean = (rho * m).sum() / m.sum().clamp(min=1)
        else:
            mean = rho.mean()
        total = mean if total is None else total + mean
    if total is None:
        raise ValueError("ponder_loss needs at least one adaptive stage")
    return tau * total


def _crop(m: torch.Tensor, image_size: Tuple[int, int], stride: int) -> torch.Tensor:
    """(H,W) stage map of a padded batch -> the (ceil(h/s), ceil(w/s)) part on the image, float CPU."""
    return m[: math.ceil(image_size[0] / stride), : math.ceil(image_size[1] / stride)].detach().float().cpu()


class SACTResNet(ResNet, AdaptiveBackbone):
    """detectron2 ResNet with SACT/ACT stages (MODE none: dense). ``last_ponder`` maps stage name -> StagePonder.

    Contract (:class:`AdaptiveBackbone`): ``extra_losses`` -> {"loss_ponder": tau * sum over stages of
    mean(rho) over the images' positions} (padding excluded); ``image_outputs`` -> {"ponder_maps":
    {stage: (h,w)}, "ponder_map": their :func:`sum_ponder_maps`}; ``image_flops`` counts the units each
    position ran (:mod:`.flops`); ``log_statistics`` -> ponder/<stage>_mean|_std.
    """

    keep_trainable = ("halting",)

    def __init__(self, stem: nn.Module, stages: List[List[nn.Module]], *, out_features: List[str], freeze_at: int,
                 mode: str, adaptive_stages: List[str], eps: float, halt_norm: str, halt_kernel_size: int,
                 halt_bias_init: float, execution: str = "dense", sparse_max_density: float = 1.0,
                 halting_kwargs: Optional[dict] = None, tau: float = 0.0) -> None:
        super().__init__(stem, stages, out_features=out_features, freeze_at=0)
        if not tau >= 0:
            raise ValueError(f"cfg.MODEL.SACT.TAU must be >= 0, got {tau}")
        self.mode = mode
        self.tau = float(tau)
        self.family = "dense" if mode == "none" else mode
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
        """detectron2's ResNet forward; x (B,3,H,W) -> {name: (B,C,H/s,W/s)} in the memory format of x.

        At inference with a sparse / auto execution the stem and the stages run channels-last with
        BN folded into the convs (the gather kernels need channels-last states; converting the
        3-channel input is cheap); the outputs are converted back to NCHW unless x is channels-last.
        """
        self._record_input(x)
        if self.training or capturing_graph() or all(getattr(self, n).execution == "dense"
                                                     for n in self.adaptive_stages):
            return super().forward(x)
        keep_channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        x = x.contiguous(memory_format=torch.channels_last)
        x = dense_folded_forward(sparse.cached_fold(self.stem, fold_block), x)
        outputs = {"stem": x} if "stem" in self._out_features else {}
        for name, stage in zip(self.stage_names, self.stages):
            x = stage(x)
            if name in self._out_features:
                outputs[name] = x
        if self.num_classes is not None:
            x = self.linear(torch.flatten(self.avgpool(x), 1))
            if "linear" in self._out_features:
                outputs["linear"] = x
        return outputs if keep_channels_last else {k: v.contiguous() for k, v in outputs.items()}

    # -- contract -------------------------------------------------------------------------------
    def extra_losses(self) -> Dict[str, torch.Tensor]:
        """{"loss_ponder": tau * sum_stages mean(rho) over valid positions} of the last forward (dense: {})."""
        ponders = self.last_ponder
        if not ponders:
            return {}
        return {"loss_ponder": ponder_loss(ponders, self.tau, self._batch_sizes)}

    def log_statistics(self) -> Dict[str, float]:
        """ponder/<stage>_mean and _std of rho over the last batch's image positions."""
        out: Dict[str, float] = {}
        for name, p in self.last_ponder.items():
            rho = p.ponder_cost.detach()
            if self._batch_sizes is not None:
                rho = rho[valid_mask(p, self._batch_sizes)]
            out[f"ponder/{name}_mean"] = float(rho.mean())
            out[f"ponder/{name}_std"] = float(rho.std()) if rho.numel() > 1 else 0.0
        return out

    def image_flops(self, index: int) -> float:
        """FLOPs of image ``index`` of the last forward: the units each of its positions ran."""
        return backbone_flops(self, self.image_size(index), index=index)

    def image_outputs(self, index: int) -> Dict[str, Any]:
        """{"ponder_maps": {stage: (ceil(h/s), ceil(w/s)) rho on the image}, "ponder_map": their sum on the
        finest grid (:func:`sum_ponder_maps`, nearest)}; {} for MODE none."""
        ponders = self.last_ponder
        if not ponders:
            return {}
        size = self.image_size(index)
        maps = {n: _crop(p.ponder_cost[index, 0], size, p.stride) for n, p in ponders.items()}
        return {"ponder_maps": maps, "ponder_map": sum_ponder_maps(list(maps.values()))}

    def set_execution(self, execution: str, sparse_max_density: Optional[float] = None) -> None:
        """Switch the inference path of every adaptive stage: dense | sparse | auto; ``sparse_max_density``: the
        auto threshold (-1: by map width, see :func:`sact_det.config.constants.sparse_max_density`; None: kept)."""
        if execution not in EXECUTION_MODES:
            raise ValueError(f"execution must be one of {EXECUTION_MODES}, got {execution!r}")
        for name in self.adaptive_stages:
            stage = getattr(self, name)
            stage.execution = execution
            if sparse_max_density is not None:
                stage.sparse_max_density = sparse_max_density

    @contextlib.contextmanager
    def replay_masks(self, masks: Mapping[str, Sequence[torch.Tensor]]) -> Iterator["SACTResNet"]:
        """Inside the block, units l >= 1 of adaptive stage ``name`` run on ``masks[name][l - 1]`` ((B,1,H,W)
        or (B,1,1,1) bool; units past the list run nowhere) instead of the halting masks; the halting
        scores are still computed and weight the outputs. Sparse / auto execution only (e.g. a trained
        model's masks, from ``last_ponder[name].masks``, replayed on a network of other widths)."""
        if all(getattr(self, n).execution == "dense" for n in self.adaptive_stages):
            raise RuntimeError("replay_masks acts on the sparse / auto path: call set_execution('sparse' | 'auto')")
        missing = [n for n in self.adaptive_stages if n not in masks]
        if missing:
            raise KeyError(f"replay_masks: no masks for adaptive stages {missing}")
        stages = [getattr(self, n) for n in self.adaptive_stages]
        for name, stage in zip(self.adaptive_stages, stages):
            stage._replay = list(masks[name])
        try:
            yield self
        finally:
            for stage in stages:
                stage._replay = None

    def freeze(self, freeze_at: int = 0) -> "SACTResNet":
        """Freeze the stem (freeze_at >= 1) and the first freeze_at - 1 stages; halting stays trainable."""
        return AdaptiveBackbone.freeze(self, freeze_at)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return super().output_shape()


@BACKBONE_REGISTRY.register()
def build_sact_resnet_backbone(cfg, input_shape: ShapeSpec) -> SACTResNet:
    """SACT / ACT / dense ResNet from cfg.MODEL.RESNETS and cfg.MODEL.SACT."""
    validate_sact_cfg(cfg)
    s = cfg.MODEL.SACT
    if s.VARIANT == "original":  # the original SACT code's pre-activation ResNet v2 (blocks 1-3 in a C4 detector)
        from ..original.resnet import build_original_resnet_v2_backbone

        return build_original_resnet_v2_backbone(cfg, input_shape)
    stem, stages = make_resnet_stages(cfg, input_shape.channels)
    return SACTResNet(
        stem, stages, out_features=list(cfg.MODEL.RESNETS.OUT_FEATURES), freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        mode=s.MODE, adaptive_stages=list(s.STAGES), eps=float(s.EPS), halt_norm=s.HALT_NORM,
        halt_kernel_size=int(s.HALT_KERNEL_SIZE), halt_bias_init=float(s.HALT_BIAS_INIT),
        execution=s.EXECUTION, sparse_max_density=float(s.SPARSE_MAX_DENSITY), halting_kwargs={"init": s.HALT_INIT},
        tau=float(s.TAU),
    )
