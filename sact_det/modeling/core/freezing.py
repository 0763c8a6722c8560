"""Freezing of ResNet stems and units, shared by every backbone family (imports no family)."""
from typing import Sequence

from detectron2.layers import FrozenBatchNorm2d
from torch import nn

__all__ = ["freeze_except", "freeze_resnet"]


def freeze_except(module: nn.Module, keep: Sequence[str] = ()) -> None:
    """Freeze a stem/unit like detectron2's CNNBlockBase.freeze (no grads, BN -> FrozenBN), except the
    children named in ``keep`` (a family's own branches: SACT "halting", AIG "gate")."""
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


def freeze_resnet(resnet: nn.Module, freeze_at: int, keep: Sequence[str] = ()) -> None:
    """detectron2's FREEZE_AT on ``resnet.stem`` / ``resnet.stages``: the stem (freeze_at >= 1) and the
    first freeze_at - 1 stages; the children of a unit named in ``keep`` stay trainable."""
    if freeze_at >= 1:
        freeze_except(resnet.stem, keep)
    for idx, stage in enumerate(resnet.stages, start=2):
        if freeze_at >= idx:
            for block in stage.children():
                freeze_except(block, keep)
