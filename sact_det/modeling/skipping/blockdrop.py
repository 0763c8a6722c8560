"""BlockDrop (Wu et al., CVPR 2018): a policy network picks, per image, which residual units run.

Policy: a small ResNet (BasicBlocks [1,1,1,1] with an ImageNet stem, or [1,1,1] with a CIFAR
stem, as the original's Policy224 / Policy32) on a downsampled copy of the image (the image's own
area resized to POLICY_INPUT_SIZE^2; an exact integer factor uses average pooling, as the
original's 224 -> 112), global average pool, fc to one logit per unit, sigmoid -> p (B,U).
Training: actions ~ Bernoulli(alpha * p + (1 - alpha) * (1 - p)) (bounded to [1-alpha, alpha]);
the self-critical baseline is the thresholded policy (p >= 0.5); reward = 1 - (fraction of units
used)^2 if "correct" else PENALTY; REINFORCE loss -sum_u log pi(a_u) * (R(sample) - R(greedy)),
minus ENTROPY_WEIGHT * (Bernoulli entropy of q) in the curriculum. Evaluation: a unit runs iff p >= 0.5, and
only for the images that chose it. A skipped unit outputs its shortcut (projection without ReLU).
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet
from torch import nn

from ...config.constants import STAGE_ORDER
from ...config.families import add_blockdrop_config
from ..core.flop_rules import dense_resnet_flops, linear_flops
from ..core.resnets import CifarStem, make_resnet_stages
from .base import UnitSkippingResNet, built_stage_sizes, check_stage_list, residual_branch, shortcut_branch

__all__ = ["PolicyNet", "BlockDropResNet", "build_blockdrop_resnet_backbone", "add_blockdrop_config",
           "bounded_probs", "blockdrop_reward", "detection_correct", "curriculum_mask", "reinforce_loss", "policy_input", "PHASES"]

PHASES = ("curriculum", "finetune")


# -- policy arithmetic (pure functions, shared by detection and classification) -------------------
def bounded_probs(probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * p + (1 - alpha) * (1 - p): keeps sampling probabilities in [1 - alpha, alpha]."""
    return probs * alpha + (1.0 - probs) * (1.0 - alpha)


def blockdrop_reward(executed: torch.Tensor, correct: torch.Tensor, penalty: float) -> torch.Tensor:
    """(B,U) actions, (B,) correct -> (B,) reward: 1 - (units used / U)^2 if correct else ``penalty``."""
    usage = executed.float().mean(dim=1)
    return torch.where(correct.bool(), 1.0 - usage ** 2, torch.full_like(usage, float(penalty)))


def detection_correct(loss: torch.Tensor, loss_all_units: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Detection's "correct": (B,) per-image detector loss <= (1 + tolerance) * loss with every unit run."""
    return loss <= (1.0 + tolerance) * loss_all_units


def curriculum_mask(num_units: int, step: int, device=None) -> torch.Tensor:
    """(U,) bool: the units the policy decides in curriculum step ``step`` (the last ``step`` units)."""
    mask = torch.zeros(num_units, dtype=torch.bool, device=device)
    mask[max(0, num_units - int(step)):] = True
    return mask


def reinforce_loss(q: torch.Tensor, actions: torch.Tensor, advantage: torch.Tensor,
                   mask: Optional[torch.Tensor] = None, entropy_weight: float = 0.0) -> torch.Tensor:
    """Mean over the batch of -sum_u mask * log Bernoulli(q)(a) * A - entropy_weight * sum_u H(q).

    H(q) = -q log q - (1 - q) log(1 - q), the Bernoulli entropy (maximal at q = 0.5). The original
    code uses only -q log q, which is maximal at q = 1/e and so, whenever the rewards carry no
    signal, pushes every unit below 0.5, i.e. towards being dropped.

    q: (B,U) bounded probabilities (with grad); actions: (B,U) {0,1}; advantage: (B,) (no grad);
    mask: (U,) or (B,U) (the curriculum's learnable units) or None.
    """
    a = actions.to(q.dtype)
    qc = q.clamp(1e-15, 1 - 1e-15)
    logp = a * torch.log(qc) + (1 - a) * torch.log(1 - qc)
    loss = -logp * advantage.detach().to(q.dtype)[:, None]
    if mask is not None:
        loss = loss * mask.to(q.dtype)
    total = loss.sum()
    if entropy_weight:
        total = total - entropy_weight * (-qc * torch.log(qc) - (1 - qc) * torch.log(1 - qc)).sum()
    return total / q.shape[0]


def policy_input(images: torch.Tensor, image_sizes: Optional[Sequence[Sequence[int]]], size: int) -> torch.Tensor:
    """(B,3,H,W) padded batch -> (B,3,size,size): each image's own area, average-pooled by an exact
    integer factor when possible, else resized bilinearly with antialiasing."""
    b, _, h, w = images.shape
    sizes = image_sizes if image_sizes is not None else [(h, w)] * b
    out = []
    for i, (ih, iw) in enumerate(sizes):
        img = images[i:i + 1, :, :ih, :iw]
        if ih == iw and ih % size == 0:
            k = ih // size
            out.append(F.avg_pool2d(img, k) if k > 1 else img)
        else:
            out.append(F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(out, dim=0)


class PolicyNet(nn.Module):
    """Policy ResNet: (B,3,S,S) -> per-unit execution probabilities (B,U) = sigmoid(fc(gap(features)))."""

    def __init__(self, num_units: int, arch: str = "imagenet", norm: str = "BN", bias_init: float = 0.0) -> None:
        super().__init__()
        if arch == "imagenet":
            stem, widths, in_ch = BasicStem(3, 64, norm), (64, 128, 256, 512), 64
        elif arch == "cifar":
            stem, widths, in_ch = CifarStem(3, 16, norm), (16, 32, 64), 16
        else:
            raise ValueError(f"cfg.MODEL.BLOCKDROP.POLICY_ARCH must be 'imagenet' or 'cifar', got {arch!r}")
        stages = []
        for i, out_ch in enumerate(widths):
            stages.append(ResNet.make_stage(BasicBlock, 1, stride_per_block=[1 if i == 0 else 2], in_channels=in_ch,
                                            out_channels=out_ch, norm=norm))
            in_ch = out_ch
        names = list(STAGE_ORDER[: len(widths)])
        self.features = ResNet(stem, stages, out_features=[names[-1]])
        self.out_name = names[-1]
        self.logit = nn.Linear(widths[-1], num_units)
        nn.init.normal_(self.logit.weight, std=0.01)
        nn.init.constant_(self.logit.bias, float(bias_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.features(x)[self.out_name]
        return torch.sigmoid(self.logit(feat.mean(dim=(2, 3))))

    def flops(self, size: int) -> float:
        convs, _ = dense_resnet_flops(self.features, (size, size))
        return convs + linear_flops(self.logit)


class BlockDropResNet(UnitSkippingResNet):
    """detectron2 ResNet whose units in ``skip_stages`` are chosen per image by ``policy`` (a :class:`PolicyNet`).

    ``forward(x)``: training samples the bounded Bernoulli policy, evaluation thresholds at 0.5;
    ``forward_with_policy(x, actions)`` runs a given (B,U) policy (used by the RL meta-architecture).
    ``last_probs``: (B,U) policy probabilities of the last forward (None for a given policy).
    """

    family = "blockdrop"

    def __init__(self, stem: nn.Module, stages: List[List[nn.Module]], *, out_features: List[str], freeze_at: int,
                 skip_stages: Sequence[str], alpha: float = 0.8, policy_input_size: int = 112,
                 policy_arch: str = "imagenet", policy_norm: str = "BN", policy_bias_init: float = 0.0,
                 phase: str = "finetune", curriculum_period: int = 100) -> None:
        super().__init__(stem, stages, out_features=out_features, skip_stages=skip_stages)
        if not 0.5 <= alpha <= 1.0:
            raise ValueError(f"cfg.MODEL.BLOCKDROP.ALPHA must be in [0.5, 1], got {alpha}")
        if phase not in PHASES:
            raise ValueError(f"cfg.MODEL.BLOCKDROP.PHASE must be one of {PHASES}, got {phase!r}")
        if int(curriculum_period) < 1:
            raise ValueError(f"cfg.MODEL.BLOCKDROP.CURRICULUM_PERIOD must be >= 1, got {curriculum_period}")
        if int(policy_input_size) < 8:
            raise ValueError(f"cfg.MODEL.BLOCKDROP.POLICY_INPUT_SIZE must be >= 8, got {policy_input_size}")
        self.alpha, self.phase, self.policy_input_size = float(alpha), phase, int(policy_input_size)
        self.curriculum_period, self.iteration = int(curriculum_period), 0  # iteration: set by the training loop
        self.policy = PolicyNet(len(self.unit_names), policy_arch, policy_norm, policy_bias_init)
        self._policy_flops = self.policy.flops(self.policy_input_size)
        self._actions: Optional[torch.Tensor] = None
        self.last_probs: Optional[torch.Tensor] = None
        self.last_actions: Optional[torch.Tensor] = None
        self.unused_params: List[nn.Parameter] = []
        self.freeze(freeze_at)
        if phase == "curriculum":  # only the policy learns; the detector's ResNet is fixed (original cl_training.py)
            for name, p in self.named_parameters():
                if not name.startswith("policy."):
                    p.requires_grad = False

    def train(self, mode: bool = True) -> "BlockDropResNet":
        super().train(mode)
        if mode and self.phase == "curriculum":  # the original keeps the ResNet in eval mode while the policy learns
            for name, child in self.named_children():
                if name != "policy":
                    child.eval()
        return self

    def policy_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) padded images -> (B,U) unit probabilities (uses ``image_sizes``)."""
        return self.policy(policy_input(x, self.image_sizes, self.policy_input_size))

    def forward_with_policy(self, x: torch.Tensor, actions: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Run the ResNet with the given (B,U) bool actions (columns in ``unit_names`` order)."""
        if actions.shape != (x.shape[0], len(self.unit_names)):
            raise ValueError(f"actions must be (B,U)=({x.shape[0]},{len(self.unit_names)}), got {tuple(actions.shape)}")
        self._actions, self.unused_params = actions.bool(), []
        try:
            return super().forward(x)
        finally:
            self._actions = None

    def learnable_units(self) -> torch.Tensor:
        """(U,) bool: the units the policy decides now; the curriculum hands over one more unit (from
        the last one backwards) every ``curriculum_period`` iterations, the others run."""
        u = len(self.unit_names)
        step = u if self.phase == "finetune" else min(u, 1 + int(self.iteration) // self.curriculum_period)
        return curriculum_mask(u, step, device=self.stem.conv1.weight.device)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        probs = self.policy_probs(x)
        if self.training:
            forced = ~self.learnable_units()
            actions = torch.bernoulli(bounded_probs(probs.detach(), self.alpha)).bool() | forced[None, :]
        else:
            actions = probs >= 0.5
        out = self.forward_with_policy(x, actions)
        self.last_probs, self.last_actions = probs, actions
        return out

    def _column(self, name: str) -> torch.Tensor:
        return self._actions[:, self.unit_names.index(name)]

    def _decide(self, name, block, x, stride):
        return self._column(name)

    def _train_unit(self, name, block, x, stride):
        run = self._column(name)
        if not bool(run.any()):  # nobody runs it: skip; its parameters get a zero-weighted loss term (DDP)
            self.unused_params.extend(p for p in block.parameters() if p.requires_grad)
            return shortcut_branch(block, x), run
        sc = shortcut_branch(block, x)
        full = F.relu(sc + residual_branch(block, x))
        return torch.where(run.view(-1, 1, 1, 1), full, sc), run

    def zero_unused_loss(self) -> torch.Tensor:
        """0 * sum of the parameters of units no image ran in the last training forward (DDP participation)."""
        if not self.unused_params:
            return torch.zeros((), device=self.stem.conv1.weight.device)
        return 0.0 * sum(p.sum() for p in self.unused_params)

    def extra_flops(self, index: int) -> float:
        return self._policy_flops


def blockdrop_from_parts(cfg, stem: nn.Module, stages: List[List[nn.Module]], out_features: List[str],
                         freeze_at: int) -> BlockDropResNet:
    """A :class:`BlockDropResNet` from a stem + stages (detector or classifier) and cfg.MODEL.BLOCKDROP."""
    b = cfg.MODEL.BLOCKDROP
    skip = check_stage_list("cfg.MODEL.BLOCKDROP.STAGES", list(b.STAGES), built_stage_sizes(stages, out_features))
    return BlockDropResNet(stem, stages, out_features=out_features, freeze_at=freeze_at, skip_stages=skip,
                           alpha=float(b.ALPHA), policy_input_size=int(b.POLICY_INPUT_SIZE), policy_arch=b.POLICY_ARCH,
                           policy_norm=b.POLICY_NORM, policy_bias_init=float(b.POLICY_BIAS_INIT), phase=b.PHASE,
                           curriculum_period=int(b.CURRICULUM_PERIOD))


@BACKBONE_REGISTRY.register()
def build_blockdrop_resnet_backbone(cfg, input_shape: ShapeSpec) -> BlockDropResNet:
    """BlockDrop ResNet from cfg.MODEL.RESNETS (as detectron2's builder) and cfg.MODEL.BLOCKDROP."""
    if cfg.MODEL.META_ARCHITECTURE != "BlockDropRCNN":
        raise ValueError(f"cfg.MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r} cannot train the BlockDrop "
                         f"policy; use 'BlockDropRCNN' with build_blockdrop_resnet_backbone")
    stem, stages = make_resnet_stages(cfg, input_shape.channels)
    return blockdrop_from_parts(cfg, stem, stages, list(cfg.MODEL.RESNETS.OUT_FEATURES), cfg.MODEL.BACKBONE.FREEZE_AT)
