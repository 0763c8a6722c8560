"""SACT / ACT / dense ResNet classifiers: the detector's backbone + global average pool + fc.

Parameter names: ``backbone.<detectron2 ResNet name>`` (backbone.stem.conv1.weight,
backbone.res2.0.conv1.norm.weight, backbone.res3.1.halting.local_conv.weight, ...) and
``linear.weight`` / ``linear.bias`` (detectron2's ResNet names its classifier ``linear``).
Export to the detector strips the ``backbone.`` prefix (sact_det.classification.export).
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.modeling.backbone.resnet import BasicStem
from torch import nn

from ..config.defaults import validate_sact_cfg
from .backbone import SACTResNet, StagePonder, make_resnet_stages
from .cifar_resnet import CifarStem, build_cifar_resnet
from .flops import stage_flops, conv_flops, conv_out_hw
from .meta_arch import ponder_loss

__all__ = ["SACTClassifier", "build_classifier", "classifier_flops", "classification_losses", "VALID_ARCHS"]

VALID_ARCHS = ("imagenet", "cifar")


class SACTClassifier(nn.Module):
    """backbone (SACTResNet) -> last stage -> global average pool -> linear.

    forward: images (B,3,H,W) normalised -> logits (B,num_classes); with ``return_features``
    also the dict of every stage output (res2 ... res5, (B,C,h,w)).
    """

    def __init__(self, backbone: SACTResNet, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"a classifier needs at least 1 class, got num_classes={num_classes}")
        self.backbone = backbone
        self.head_feature = backbone.stage_names[-1]
        channels = backbone.output_shape()[self.head_feature].channels
        self.linear = nn.Linear(channels, num_classes)
        nn.init.normal_(self.linear.weight, std=0.01)  # as detectron2's ResNet classifier
        nn.init.zeros_(self.linear.bias)

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    @property
    def mode(self) -> str:
        return self.backbone.mode

    @property
    def ponders(self) -> Dict[str, StagePonder]:
        """Per adaptive stage, what the last forward did (empty for a dense model)."""
        return self.backbone.last_ponder

    def forward(self, images: torch.Tensor, return_features: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, Dict[str, torch.Tensor]]]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"SACTClassifier expects images of shape (B,3,H,W), got {tuple(images.shape)}")
        features = self.backbone(images)
        pooled = F.adaptive_avg_pool2d(features[self.head_feature], 1).flatten(1)
        logits = self.linear(pooled)
        return (logits, features) if return_features else logits


def _sact_kwargs(cfg) -> dict:
    s = cfg.MODEL.SACT
    return dict(mode=s.MODE, adaptive_stages=list(s.STAGES), eps=float(s.EPS), halt_norm=s.HALT_NORM,
                halt_kernel_size=int(s.HALT_KERNEL_SIZE), halt_bias_init=float(s.HALT_BIAS_INIT))


def build_classifier(cfg, num_classes: Optional[int] = None) -> SACTClassifier:
    """Classifier from cfg.SACT_CLS.ARCH ("imagenet": cfg.MODEL.RESNETS; "cifar": cfg.SACT_CLS.CIFAR)
    and cfg.MODEL.SACT. ``num_classes`` defaults to cfg.SACT_CLS.NUM_CLASSES."""
    validate_sact_cfg(cfg)
    c = cfg.SACT_CLS
    num_classes = int(c.NUM_CLASSES if num_classes is None else num_classes)
    freeze_at = int(c.FREEZE_AT)
    if c.ARCH == "imagenet":
        stem, stages = make_resnet_stages(cfg, 3)
        backbone = SACTResNet(stem, stages, out_features=["res2", "res3", "res4", "res5"], freeze_at=freeze_at,
                              **_sact_kwargs(cfg))
    elif c.ARCH == "cifar":
        backbone = build_cifar_resnet(int(c.CIFAR.NUM_UNITS), width=int(c.CIFAR.WIDTH), norm=cfg.MODEL.RESNETS.NORM,
                                      freeze_at=freeze_at, **_sact_kwargs(cfg))
    else:
        raise ValueError(f"cfg.SACT_CLS.ARCH must be one of {VALID_ARCHS}, got {c.ARCH!r}")
    return SACTClassifier(backbone, num_classes)


def _stem_flops(stem: nn.Module, hw: Tuple[int, int]) -> Tuple[float, Tuple[int, int]]:
    """FLOPs of the stem conv and the stem's output size (BasicStem ends in a 3x3/2 max pool, pad 1)."""
    hw = conv_out_hw(stem.conv1, hw)
    flops = conv_flops(stem.conv1, hw[0] * hw[1])
    if isinstance(stem, BasicStem):
        hw = ((hw[0] - 1) // 2 + 1, (hw[1] - 1) // 2 + 1)
    elif not isinstance(stem, CifarStem):
        raise TypeError(f"no FLOP rule for stem {type(stem).__name__}")
    return flops, hw


def classifier_flops(model: SACTClassifier, image_hw: Sequence[int], batch_size: int,
                     ponder: Optional[Dict[str, StagePonder]] = None) -> Dict[str, torch.Tensor]:
    """Per-image FLOPs of the last forward (1 multiply-add = 2 FLOPs; convs and fc only).

    Returns {"stem", <stage>..., "linear", "total"}: each a float64 tensor (batch_size,).
    Stage counting is flops.stage_flops (dilated mask for the first conv of units l >= 1).
    """
    model = getattr(model, "module", model)  # unwrap DDP
    ponder = model.ponders if ponder is None else ponder
    out: Dict[str, List[float]] = {"stem": [], "linear": [], "total": []}
    for name in model.backbone.stage_names:
        out[name] = []
    fc = 2.0 * model.linear.in_features * model.linear.out_features
    for i in range(batch_size):
        hw = (int(image_hw[0]), int(image_hw[1]))
        f_stem, hw = _stem_flops(model.backbone.stem, hw)
        total = f_stem + fc
        out["stem"].append(f_stem)
        out["linear"].append(fc)
        for name, stage in zip(model.backbone.stage_names, model.backbone.stages):
            f, hw = stage_flops(stage, hw, ponder.get(name), i)
            out[name].append(f)
            total += f
        out["total"].append(total)
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}


def classification_losses(logits: torch.Tensor, targets: torch.Tensor, ponders: Dict[str, StagePonder], tau: float,
                          label_smoothing: float = 0.0) -> Dict[str, torch.Tensor]:
    """{"loss_cls": CE (label smoothing), "loss_ponder": tau * sum_stages mean(rho)} (dense: no ponder)."""
    losses = {"loss_cls": F.cross_entropy(logits, targets, label_smoothing=label_smoothing)}
    if ponders:
        losses["loss_ponder"] = ponder_loss(ponders, tau)
    return losses
