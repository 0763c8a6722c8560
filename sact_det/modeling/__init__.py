from .act import HaltingState
from .backbone import SACTResNet, SACTStage, StagePonder, build_sact_resnet_backbone
from .halting import GlobalHalting, SpatialHalting
from .meta_arch import SACTRCNN
from . import aig, blockdrop, gated_rcnn  # noqa: F401,E402  (ConvNet-AIG / BlockDrop backbones, keys, meta-archs)
from . import original_resnet  # noqa: F401,E402  (the original SACT networks; registers OriginalRes5ROIHeads)

__all__ = ["HaltingState", "SACTResNet", "SACTStage", "StagePonder", "build_sact_resnet_backbone",
           "GlobalHalting", "SpatialHalting", "SACTRCNN"]
