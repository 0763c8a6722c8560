"""One classifier over the adaptive-backbone contract: backbone (any family) -> head -> logits.

The backbone is the family that cfg.MODEL.BACKBONE.NAME names in detectron2's backbone registry
(SACT / ACT / dense: build_sact_resnet_backbone, ConvNet-AIG: build_aig_resnet_backbone,
BlockDrop: build_blockdrop_resnet_backbone), wrapped around the stem and stages of
cfg.SACT_CLS.ARCH ("imagenet": cfg.MODEL.RESNETS; "cifar": cfg.SACT_CLS.CIFAR). With
cfg.MODEL.SACT.VARIANT original the SACT builder gives the original SACT code's networks.

The head follows the network: ``linear`` (global average pool -> fc), ``postnorm`` (the original
ImageNet ResNet v2: BN + ReLU -> spatial mean -> fc) or ``final_norm`` (the original CIFAR ResNet:
spatial mean -> BN + leaky ReLU -> fc). Parameter names: ``backbone.<detectron2 ResNet name>``
and ``linear.*`` / ``postnorm.*`` / ``final_norm.*`` (export to the detector strips ``backbone.``).
cfg.SACT_CLS.BACKGROUND_CLASS adds the original ImageNet models' class 0 (1001 logits).
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.modeling import BACKBONE_REGISTRY
from torch import nn

from ...config.defaults import validate_sact_cfg
from ..core.flop_rules import dense_resnet_flops, linear_flops, stem_flops
from ..core.resnets import CifarStem, make_cifar_stages, make_resnet_stages
from ..halting.branches import variance_scaling_
from ..original.cifar import CIFAR_BN_EPS, CIFAR_BN_MOMENTUM, build_original_cifar_resnet
from ..original.layers import lrelu, original_norm
from ..original.resnet import IMAGENET_BN_EPS, IMAGENET_BN_MOMENTUM, build_original_resnet_v2
from ..sact.backbone import SACTResNet, StagePonder
from ..sact.flops import stage_flops
from ..skipping.aig import aig_from_parts
from ..skipping.blockdrop import blockdrop_from_parts

__all__ = ["AdaptiveClassifier", "build_classifier", "classifier_flops", "CLASSIFIER_BACKBONES", "HEADS",
           "VALID_ARCHS"]

VALID_ARCHS = ("imagenet", "cifar")
HEADS = ("linear", "postnorm", "final_norm")


class AdaptiveClassifier(nn.Module):
    """backbone (an adaptive backbone of any family) -> last stage -> head -> logits.

    forward: images (B,3,H,W) normalised -> logits (B,num_classes); with ``return_features`` also
    the dict of every stage output (B,C,h,w) plus the head's intermediates ("postnorm" (B,C,h,w),
    "pool5" (B,C) / "final_norm" (B,C)).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head: str = "linear", norm: str = "BN") -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"a classifier needs at least 1 class, got num_classes={num_classes}")
        if head not in HEADS:
            raise ValueError(f"classifier head must be one of {HEADS}, got {head!r}")
        self.backbone, self.head = backbone, head
        self.head_feature = backbone.stage_names[-1]
        channels = backbone.output_shape()[self.head_feature].channels
        self.linear = nn.Linear(channels, num_classes)
        nn.init.zeros_(self.linear.bias)
        if head == "linear":
            nn.init.normal_(self.linear.weight, std=0.01)  # as detectron2's ResNet classifier
            return
        variance_scaling_(self.linear.weight)  # the original's 1x1 logits conv (slim conv2d default)
        if head == "postnorm":
            self.postnorm = original_norm(norm, channels, IMAGENET_BN_EPS, IMAGENET_BN_MOMENTUM)
        else:
            self.final_norm = original_norm(norm, channels, CIFAR_BN_EPS, CIFAR_BN_MOMENTUM)

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    @property
    def family(self) -> str:
        """The backbone family: "sact" | "act" | "aig" | "blockdrop" | "dense"."""
        return self.backbone.family

    @property
    def ponders(self) -> Dict[str, StagePonder]:
        """SACT / ACT: per adaptive stage, what the last forward did; other families: {}."""
        return self.backbone.last_ponder if self.family in ("sact", "act") else {}

    def pool_features(self, x: torch.Tensor, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Last stage output (B,C,h,w) -> (B,C) fc input; adds the head's intermediates to ``features``."""
        if self.head == "postnorm":
            features["postnorm"] = x = F.relu(self.postnorm(x))
            features["pool5"] = pooled = x.mean(dim=(2, 3))
            return pooled
        if self.head == "final_norm":
            pooled = x.mean(dim=(2, 3), keepdim=True)  # BN on (B,C,1,1), as the original on [B,1,1,C]
            features["final_norm"] = out = lrelu(self.final_norm(pooled)).flatten(1)
            return out
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def head_logits(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Backbone outputs {stage: (B,C,h,w)} -> logits (B,num_classes)."""
        return self.linear(self.pool_features(features[self.head_feature], features))

    def forward(self, images: torch.Tensor, return_features: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, Dict[str, torch.Tensor]]]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"AdaptiveClassifier expects images of shape (B,3,H,W), got {tuple(images.shape)}")
        b, _, h, w = images.shape
        self.backbone.set_image_sizes([(int(h), int(w))] * b)
        features = self.backbone(images)
        logits = self.head_logits(features)
        return (logits, features) if return_features else logits

    def extra_losses(self) -> Dict[str, torch.Tensor]:
        """The backbone's training losses of the last forward (ponder cost, target rate, ...)."""
        return self.backbone.extra_losses()

    def head_flops(self) -> float:
        return linear_flops(self.linear)

    def image_flops(self, index: int) -> float:
        """FLOPs of image ``index`` of the last forward: backbone (its own record) + fc."""
        return float(self.backbone.image_flops(index)) + self.head_flops()

    def dense_flops(self, image_hw: Sequence[int]) -> float:
        """FLOPs of the plain network (stem, every unit, fc; no halting branches, gates or policy)."""
        return dense_resnet_flops(self.backbone, image_hw)[0] + self.head_flops()


# -- construction through the backbone registry ------------------------------------------------------
def _sact_from_parts(cfg, stem: nn.Module, stages: List[List[nn.Module]], out_features: List[str],
                     freeze_at: int) -> SACTResNet:
    s = cfg.MODEL.SACT
    return SACTResNet(stem, stages, out_features=out_features, freeze_at=freeze_at, mode=s.MODE,
                      adaptive_stages=list(s.STAGES), eps=float(s.EPS), halt_norm=s.HALT_NORM,
                      halt_kernel_size=int(s.HALT_KERNEL_SIZE), halt_bias_init=float(s.HALT_BIAS_INIT),
                      halting_kwargs={"init": s.HALT_INIT}, tau=float(s.TAU))


# registered backbone name -> builder of that family around given stem + stages
CLASSIFIER_BACKBONES: Dict[str, Callable[..., nn.Module]] = {
    "build_sact_resnet_backbone": _sact_from_parts,
    "build_aig_resnet_backbone": aig_from_parts,
    "build_blockdrop_resnet_backbone": blockdrop_from_parts,
}


def _stem_and_stages(cfg) -> Tuple[nn.Module, List[List[nn.Module]], List[str]]:
    c = cfg.SACT_CLS
    if c.ARCH == "imagenet":
        stem, stages = make_resnet_stages(cfg, 3)
        return stem, stages, ["res2", "res3", "res4", "res5"]
    if c.ARCH == "cifar":
        width, norm = int(c.CIFAR.WIDTH), cfg.MODEL.RESNETS.NORM
        stages = make_cifar_stages(int(c.CIFAR.NUM_UNITS), (width, 2 * width, 4 * width), norm)
        return CifarStem(3, width, norm), stages, ["res2", "res3", "res4"]
    raise ValueError(f"cfg.SACT_CLS.ARCH must be one of {VALID_ARCHS}, got {c.ARCH!r}")


def build_classifier(cfg, num_classes: Optional[int] = None) -> AdaptiveClassifier:
    """Classifier of the family named by cfg.MODEL.BACKBONE.NAME on the network of cfg.SACT_CLS.ARCH.

    ``num_classes`` (the data set's class count) defaults to cfg.SACT_CLS.NUM_CLASSES; the fc has one
    more output (class 0) when cfg.SACT_CLS.BACKGROUND_CLASS is set.
    """
    validate_sact_cfg(cfg)
    name = cfg.MODEL.BACKBONE.NAME
    if name not in CLASSIFIER_BACKBONES:
        known = "registered, but not a classifier family" if name in BACKBONE_REGISTRY else "not registered"
        raise ValueError(f"cfg.MODEL.BACKBONE.NAME={name!r} is {known}; the classifier builds one of "
                         f"{sorted(CLASSIFIER_BACKBONES)} (SACT / ACT / dense by cfg.MODEL.SACT.MODE)")
    c = cfg.SACT_CLS
    if c.ARCH not in VALID_ARCHS:
        raise ValueError(f"cfg.SACT_CLS.ARCH must be one of {VALID_ARCHS}, got {c.ARCH!r}")
    num_classes = int(c.NUM_CLASSES if num_classes is None else num_classes)
    num_classes += int(bool(c.get("BACKGROUND_CLASS", False)))
    freeze_at, norm = int(c.FREEZE_AT), cfg.MODEL.RESNETS.NORM
    if name == "build_sact_resnet_backbone" and cfg.MODEL.SACT.VARIANT == "original":
        if c.ARCH == "imagenet":
            return AdaptiveClassifier(build_original_resnet_v2(cfg, freeze_at=freeze_at), num_classes, "postnorm", norm)
        backbone = build_original_cifar_resnet(cfg, int(c.CIFAR.NUM_UNITS), width=int(c.CIFAR.WIDTH),
                                               freeze_at=freeze_at)
        return AdaptiveClassifier(backbone, num_classes, "final_norm", norm)
    stem, stages, out_features = _stem_and_stages(cfg)
    backbone = CLASSIFIER_BACKBONES[name](cfg, stem, stages, out_features, freeze_at)
    return AdaptiveClassifier(backbone, num_classes, "linear")


def classifier_flops(model: AdaptiveClassifier, image_hw: Sequence[int], batch_size: int,
                     ponder: Optional[Dict[str, StagePonder]] = None) -> Dict[str, torch.Tensor]:
    """SACT / ACT / dense classifiers: per-image FLOPs of the last forward, per part.

    Returns {"stem", <stage>..., "linear", "total"}: each a float64 tensor (batch_size,); ``ponder``
    {} counts the dense network (halting branches excluded), None the last forward's ponder record.
    """
    model = getattr(model, "module", model)  # unwrap DDP
    ponder = model.ponders if ponder is None else ponder
    out: Dict[str, List[float]] = {"stem": [], "linear": [], "total": []}
    for name in model.backbone.stage_names:
        out[name] = []
    fc = model.head_flops()
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
