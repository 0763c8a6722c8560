from .act import HaltingState
from .backbone import SACTResNet, SACTStage, StagePonder, build_sact_resnet_backbone
from .halting import GlobalHalting, SpatialHalting
from .meta_arch import SACTRCNN

__all__ = ["HaltingState", "SACTResNet", "SACTStage", "StagePonder", "build_sact_resnet_backbone",
           "GlobalHalting", "SpatialHalting", "SACTRCNN"]
