"""SACT / ACT / dense ResNet classifiers: the detector's backbone + global average pool + fc.

Parameter names: ``backbone.<detectron2 ResNet name>`` (backbone.stem.conv1.weight,
backbone.res2.0.conv1.norm.weight, backbone.res3.1.halting.local_conv.weight, ...) and
``linear.weight`` / ``linear.bias`` (detectron2's ResNet names its classifier ``linear``).
Export to the detector strips the ``backbone.`` prefix (sact_det.classification.export).

cfg.MODEL.SACT.VARIANT original builds the original SACT code's networks instead
(original_resnet.py / original_cifar.py) with their heads: ImageNet ``postnorm`` BN + ReLU ->
mean -> ``linear``; CIFAR mean -> ``final_norm`` BN + leaky ReLU -> ``linear``.
cfg.SACT_CLS.BACKGROUND_CLASS adds the original ImageNet models' class 0 (1001 logits).
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..config.defaults import validate_sact_cfg
from .backbone import SACTResNet, StagePonder, make_resnet_stages
from .cifar_resnet import build_cifar_resnet
from .flops import stage_flops, stem_flops
from .halting import variance_scaling_
from .meta_arch import ponder_loss
from .original_cifar import CIFAR_BN_EPS, CIFAR_BN_MOMENTUM, build_original_cifar_resnet
from .original_layers import lrelu, original_norm
from .original_resnet import IMAGENET_BN_EPS, IMAGENET_BN_MOMENTUM, build_original_resnet_v2

__all__ = ["SACTClassifier", "OriginalV2Classifier", "OriginalCifarClassifier", "build_classifier",
           "classifier_flops", "classification_losses", "VALID_ARCHS"]

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

    def pool_features(self, x: torch.Tensor, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Last stage output (B,C,h,w) -> (B,C) fc input: global average pool. Subclasses may add
        intermediate results to ``features``."""
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, images: torch.Tensor, return_features: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, Dict[str, torch.Tensor]]]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"SACTClassifier expects images of shape (B,3,H,W), got {tuple(images.shape)}")
        features = self.backbone(images)
        logits = self.linear(self.pool_features(features[self.head_feature], features))
        return (logits, features) if return_features else logits


class OriginalV2Classifier(SACTClassifier):
    """Head of the original ImageNet ResNet v2: ``postnorm`` BN + ReLU -> spatial mean (``pool5``) -> linear.

    With ``return_features`` the dict also holds "postnorm" (B,C,h,w) and "pool5" (B,C).
    """

    def __init__(self, backbone: SACTResNet, num_classes: int, norm: str = "BN") -> None:
        super().__init__(backbone, num_classes)
        self.postnorm = original_norm(norm, self.linear.in_features, IMAGENET_BN_EPS, IMAGENET_BN_MOMENTUM)
        variance_scaling_(self.linear.weight)  # the original's 1x1 logits conv (slim conv2d default)

    def pool_features(self, x: torch.Tensor, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        features["postnorm"] = x = F.relu(self.postnorm(x))
        features["pool5"] = pooled = x.mean(dim=(2, 3))
        return pooled


class OriginalCifarClassifier(SACTClassifier):
    """Head of the original CIFAR ResNet: spatial mean -> ``final_norm`` BN + leaky ReLU -> linear.

    With ``return_features`` the dict also holds "final_norm" (B,C).
    """

    def __init__(self, backbone: SACTResNet, num_classes: int, norm: str = "BN") -> None:
        super().__init__(backbone, num_classes)
        self.final_norm = original_norm(norm, self.linear.in_features, CIFAR_BN_EPS, CIFAR_BN_MOMENTUM)
        variance_scaling_(self.linear.weight)

    def pool_features(self, x: torch.Tensor, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True)  # BN on (B,C,1,1), as the original on [B,1,1,C]
        features["final_norm"] = out = lrelu(self.final_norm(pooled)).flatten(1)
        return out


def _sact_kwargs(cfg) -> dict:
    s = cfg.MODEL.SACT
    return dict(mode=s.MODE, adaptive_stages=list(s.STAGES), eps=float(s.EPS), halt_norm=s.HALT_NORM,
                halt_kernel_size=int(s.HALT_KERNEL_SIZE), halt_bias_init=float(s.HALT_BIAS_INIT),
                halting_kwargs={"init": s.HALT_INIT})


def build_classifier(cfg, num_classes: Optional[int] = None) -> SACTClassifier:
    """Classifier from cfg.SACT_CLS.ARCH ("imagenet": cfg.MODEL.RESNETS; "cifar": cfg.SACT_CLS.CIFAR),
    cfg.MODEL.SACT (VARIANT "original": the original SACT code's networks) and cfg.SACT_CLS.BACKGROUND_CLASS.

    ``num_classes`` (the data set's class count) defaults to cfg.SACT_CLS.NUM_CLASSES; the fc has one
    more output (class 0) when cfg.SACT_CLS.BACKGROUND_CLASS is set.
    """
    validate_sact_cfg(cfg)
    c = cfg.SACT_CLS
    num_classes = int(c.NUM_CLASSES if num_classes is None else num_classes)
    num_classes += int(bool(c.get("BACKGROUND_CLASS", False)))
    freeze_at = int(c.FREEZE_AT)
    if cfg.MODEL.SACT.VARIANT == "original":
        return _build_original_classifier(cfg, num_classes, freeze_at)
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


def _build_original_classifier(cfg, num_classes: int, freeze_at: int) -> SACTClassifier:
    c, norm = cfg.SACT_CLS, cfg.MODEL.RESNETS.NORM
    if c.ARCH == "imagenet":
        return OriginalV2Classifier(build_original_resnet_v2(cfg, freeze_at=freeze_at), num_classes, norm)
    if c.ARCH == "cifar":
        backbone = build_original_cifar_resnet(cfg, int(c.CIFAR.NUM_UNITS), width=int(c.CIFAR.WIDTH),
                                               freeze_at=freeze_at)
        return OriginalCifarClassifier(backbone, num_classes, norm)
    raise ValueError(f"cfg.SACT_CLS.ARCH must be one of {VALID_ARCHS}, got {c.ARCH!r}")


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
        f_stem, hw = stem_flops(model.backbone.stem, hw)
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
