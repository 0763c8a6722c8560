"""CIFAR SACT / ACT / dense ResNets (He et al. 2016, section 4.2) built from the detector's own backbone code.

A 3x3 stem conv with 16 channels, then 3 stages of ``n`` detectron2 BasicBlocks with 16 / 32 / 64
channels (strides 1, 2, 2), named res2, res3, res4 like detectron2's stages (:mod:`.resnets`).
``n = 5`` is ResNet-32, ``n = 18`` is ResNet-110. The stages are wrapped by :class:`SACTResNet`, so
the halting arithmetic (act.py), the halting branches (halting.py) and the FLOP rules are the
ones of the detector.
"""
from typing import Optional, Sequence

from .backbone import SACTResNet
from .resnets import CifarStem, make_cifar_stages

__all__ = ["CifarStem", "make_cifar_stages", "build_cifar_resnet"]


def build_cifar_resnet(num_units: int, *, width: int = 16, norm: str = "BN", mode: str = "sact",
                       adaptive_stages: Sequence[str] = ("res2", "res3", "res4"), eps: float = 0.01,
                       halt_norm: str = "BN", halt_kernel_size: int = 3, halt_bias_init: float = -3.0,
                       freeze_at: int = 0, halting_kwargs: Optional[dict] = None, tau: float = 0.0) -> SACTResNet:
    """CIFAR ResNet-(6n+2) backbone; outputs res2 (stride 1), res3 (2), res4 (4)."""
    stem = CifarStem(3, width, norm)
    stages = make_cifar_stages(num_units, (width, 2 * width, 4 * width), norm)
    return SACTResNet(stem, stages, out_features=["res2", "res3", "res4"], freeze_at=freeze_at, mode=mode,
                      adaptive_stages=list(adaptive_stages), eps=eps, halt_norm=halt_norm,
                      halt_kernel_size=halt_kernel_size, halt_bias_init=halt_bias_init, halting_kwargs=halting_kwargs,
                      tau=tau)
