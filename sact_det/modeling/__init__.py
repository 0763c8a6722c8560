from .act import HaltingState
from .backbone import SACTResNet, SACTStage, StagePonder, build_sact_resnet_backbone
from .contract import AdaptiveBackbone
from .halting import GlobalHalting, SpatialHalting
from .meta_arch import AdaptiveRCNN
from . import aig, blockdrop, blockdrop_rcnn  # noqa: F401,E402  (ConvNet-AIG / BlockDrop backbones, BlockDropRCNN)
from . import original_resnet  # noqa: F401,E402  (the original SACT networks; registers OriginalRes5ROIHeads)

__all__ = ["AdaptiveBackbone", "AdaptiveRCNN", "HaltingState", "SACTResNet", "SACTStage", "StagePonder",
           "build_sact_resnet_backbone", "GlobalHalting", "SpatialHalting"]
