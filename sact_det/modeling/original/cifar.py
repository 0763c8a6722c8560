"""The original SACT code's CIFAR ResNet (``cifar_model.py``; ``cfg.MODEL.SACT.VARIANT original``, ARCH cifar).

- stem: 3x3 conv (16 ch) with bias, no BN / activation;
- unit (``residual``), leaky ReLU 0.1 everywhere: ``preact = lrelu(BN(x))``; conv1 3x3 stride s with TF
  'SAME' padding (asymmetric for stride 2 on even sizes) -> BN -> lrelu -> lrelu (the code's arg scope
  puts lrelu in both batch_norm and conv2d) -> conv2 3x3 with bias; shortcut: ``preact`` in
  block_1/unit_1, else ``x``; when the depth changes: 2x2 average pool stride 2 (VALID), then zero
  channels padded (C_out - C_in) / 2 on both sides; out = shortcut + residual;
- 3 blocks of ``num_units`` units with bc, 2bc, 4bc channels (strides 1, 2, 2); BN eps 1e-3,
  momentum 0.1 (TF decay 0.9); halting BNs followed by lrelu;
- head (classifier.py): spatial mean -> ``final_norm`` BN + lrelu -> ``linear`` (10 classes).
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d

from ...config.defaults import validate_sact_cfg
from .layers import TFSameConv2d, lrelu, original_norm
from .resnet import OriginalSACTResNet, init_conv_, original_halting_kwargs

__all__ = ["OriginalCifarStem", "OriginalCifarUnit", "make_original_cifar_stages", "build_original_cifar_resnet",
           "CIFAR_BN_EPS", "CIFAR_BN_MOMENTUM"]

CIFAR_BN_EPS = 1e-3
CIFAR_BN_MOMENTUM = 1.0 - 0.9  # TF batch_norm decay 0.9


class OriginalCifarStem(CNNBlockBase):
    """conv1 3x3 stride 1 with bias, no BN / activation; (B,3,H,W) -> (B,C,H,W)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16) -> None:
        super().__init__(in_channels, out_channels, 1)
        self.conv1 = init_conv_(Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)


class OriginalCifarUnit(CNNBlockBase):
    """Pre-activation basic unit with leaky ReLU; (B,Cin,H,W) -> (B,Cout,ceil(H/s),ceil(W/s))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *, activate_before_residual: bool = False,
                 norm: str = "BN") -> None:
        super().__init__(in_channels, out_channels, stride)
        if out_channels < in_channels or (out_channels - in_channels) % 2:
            raise ValueError("the zero-padded shortcut needs an even channel increase, "
                             f"got {in_channels} -> {out_channels}")
        self.activate_before_residual = activate_before_residual
        self.preact = original_norm(norm, in_channels, CIFAR_BN_EPS, CIFAR_BN_MOMENTUM)
        self.shortcut = None  # parameter-free (average pool + channel padding)
        self.conv1 = init_conv_(TFSameConv2d(in_channels, out_channels, 3, stride=stride, bias=False,
                                             norm=original_norm(norm, out_channels, CIFAR_BN_EPS, CIFAR_BN_MOMENTUM)))
        self.conv2 = init_conv_(TFSameConv2d(out_channels, out_channels, 3, stride=1, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = lrelu(self.preact(x))
        shortcut = preact if self.activate_before_residual else x
        out = self.conv2(lrelu(lrelu(self.conv1(preact))))
        if self.in_channels != self.out_channels:
            if self.stride > 1:
                shortcut = F.avg_pool2d(shortcut, self.stride, self.stride)
            pad = (self.out_channels - self.in_channels) // 2
            shortcut = F.pad(shortcut, (0, 0, 0, 0, pad, pad))
        return shortcut + out


def make_original_cifar_stages(units: Sequence[int], base_channels: int = 16, norm: str = "BN"
                               ) -> List[List[OriginalCifarUnit]]:
    """block_1..3 of ``cifar_model.resnet``: widths bc, 2bc, 4bc; stride 2 in unit 1 of blocks 2, 3."""
    if len(units) != 3 or min(units) < 1:
        raise ValueError(f"the original CIFAR ResNet has 3 blocks of >= 1 unit, got {list(units)}")
    stages, in_ch = [], base_channels
    for b, num in enumerate(units):
        out_ch = base_channels * 2 ** b
        blocks = [OriginalCifarUnit(in_ch if u == 0 else out_ch, out_ch, (1 if b == 0 else 2) if u == 0 else 1,
                                    activate_before_residual=(b == 0 and u == 0), norm=norm) for u in range(int(num))]
        stages.append(blocks)
        in_ch = out_ch
    return stages


def build_original_cifar_resnet(cfg, num_units: int, *, width: int = 16, freeze_at: int = 0) -> OriginalSACTResNet:
    """The original CIFAR ResNet-(6n+2) (n = ``num_units``) with cfg.MODEL.SACT halting; outputs res2, res3, res4."""
    validate_sact_cfg(cfg)
    s = cfg.MODEL.SACT
    stem = OriginalCifarStem(3, width)
    stages = make_original_cifar_stages([num_units] * 3, width, cfg.MODEL.RESNETS.NORM)
    return OriginalSACTResNet(
        stem, stages, out_features=["res2", "res3", "res4"], freeze_at=int(freeze_at), mode=s.MODE,
        adaptive_stages=list(s.STAGES), eps=float(s.EPS), halt_norm=s.HALT_NORM,
        halt_kernel_size=int(s.HALT_KERNEL_SIZE), halt_bias_init=float(s.HALT_BIAS_INIT), execution=s.EXECUTION,
        tau=float(s.TAU),
        halting_kwargs=original_halting_kwargs(cfg, CIFAR_BN_EPS, CIFAR_BN_MOMENTUM, activation=lrelu))
