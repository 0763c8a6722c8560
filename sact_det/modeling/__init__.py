"""Models. Layout (each subpackage imports only those listed before it, and no family imports another):

- ``core``: the adaptive-backbone contract, FLOP rules, freezing, ResNet parts, ponder-map summation;
- ``halting``: the SACT / ACT halting arithmetic and halting branches;
- ``execution``: BN folding and sparse execution kernels;
- ``sact``, ``skipping`` (ConvNet-AIG, BlockDrop): the families; ``original``: the original TF networks
  as SACT variants;
- ``meta_arch``: the detector and the classifier over any family.
"""
from .core.contract import AdaptiveBackbone
from .halting.branches import GlobalHalting, SpatialHalting
from .halting.state import HaltingState
from .meta_arch.rcnn import AdaptiveRCNN
from .meta_arch.detector import AdaptiveDetector, attach_contract
from .sact.backbone import SACTResNet, SACTStage, StagePonder, build_sact_resnet_backbone
from .sact.fpn import SACTFPN, build_sact_resnet_fpn_backbone, build_sact_retinanet_resnet_fpn_backbone
from .skipping import aig, blockdrop, blockdrop_rcnn  # noqa: F401,E402  (AIG / BlockDrop backbones, BlockDropRCNN)
from .original import resnet as _original_resnet  # noqa: F401,E402  (registers OriginalRes5ROIHeads)

__all__ = ["AdaptiveBackbone", "AdaptiveRCNN", "AdaptiveDetector", "attach_contract", "HaltingState", "SACTResNet",
           "SACTStage", "StagePonder", "SACTFPN", "build_sact_resnet_backbone", "build_sact_resnet_fpn_backbone",
           "build_sact_retinanet_resnet_fpn_backbone", "GlobalHalting", "SpatialHalting"]
