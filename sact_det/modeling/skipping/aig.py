"""ConvNet-AIG (Veit & Belongie, ECCV 2018): a per-image gate decides whether a residual unit runs.

Gate of a unit, on the unit's *input* x: global average pool (over the image's own area) ->
1x1 conv to 16 (+bias) -> norm -> ReLU -> 1x1 conv to 2 logits [off, on] (bias init 0.1 / 2:
~87 % open at start). Training: straight-through Gumbel-softmax at temperature 1; the unit
output is relu(shortcut(x) + g * residual(x)) with g the hard 0/1 sample whose gradient is the
soft sample's. Evaluation: deterministic threshold (on iff softmax(logits)[on] >= 0.5) or, as
the original code, a hard Gumbel sample (cfg.MODEL.AIG.TEST_GATES = "sample"); an image whose
gate is off does not compute the unit.

Target-rate loss: LOSS_WEIGHT * mean over gated units u of (t_u - mean over the batch of g_u)^2.
A unit whose target rate is 1 is not gated (always runs), as the seed's schedules intend; the
original divides by all units instead of the gated ones (a constant factor, absorbed in the weight).
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from torch import nn

from ...config.constants import STAGE_ORDER
from ...config.families import add_aig_config
from ..core.flop_rules import conv_flops
from .base import (UnitSkippingResNet, built_stage_sizes, check_stage_list, pool_valid, residual_branch,
                    shortcut_branch)
from ..core.resnets import make_resnet_stages

__all__ = ["AIGGate", "AIGResNet", "build_aig_resnet_backbone", "add_aig_config", "gumbel_gate", "threshold_gate",
           "target_rate_loss", "resolve_target_rates", "seed_schedule", "SEED_SCHEDULES"]

logger = logging.getLogger(__name__)

# The seed's target-rate schedules over all units res2.0 ... res5.last, as a function of t.
SEED_SCHEDULES = {
    "resnet50": lambda t: [1, 1, 0.8, 1, t, t, t, 1, t, t, t, t, t, 1, 0.7, 1],
    "resnet101": lambda t: [1] * 8 + [t] * 25,
}
_SCHEDULE_BLOCKS = {"resnet50": [3, 4, 6, 3], "resnet101": [3, 4, 23, 3]}
TEST_GATE_MODES = ("threshold", "sample")


def seed_schedule(name: str, t: float, blocks_per_stage: Dict[str, int], stages: Sequence[str]) -> List[float]:
    """The seed's schedule ``name`` at ``t``, restricted to the units of ``stages`` (res2..res5 order)."""
    if name not in SEED_SCHEDULES:
        raise ValueError(f"cfg.MODEL.AIG.SCHEDULE must be '', 'resnet50' or 'resnet101', got {name!r}")
    expected = dict(zip(STAGE_ORDER, _SCHEDULE_BLOCKS[name]))
    for s in stages:
        if blocks_per_stage.get(s) != expected[s]:
            raise ValueError(f"cfg.MODEL.AIG.SCHEDULE={name!r} expects {expected[s]} units in {s}, this backbone has "
                             f"{blocks_per_stage.get(s)} (check cfg.MODEL.RESNETS.DEPTH)")
    rates, start = SEED_SCHEDULES[name](float(t)), 0
    picked: List[float] = []
    for s in STAGE_ORDER:
        n = expected[s]
        if s in stages:
            picked.extend(float(r) for r in rates[start:start + n])
        start += n
    return picked


def resolve_target_rates(blocks_per_stage: Dict[str, int], stages: Sequence[str], target_rates: Sequence[float],
                         schedule: str = "", t: float = 0.6) -> Dict[str, float]:
    """Unit name -> target rate for every unit of ``stages``; ValueError naming the key on bad input."""
    names = [f"{s}.{j}" for s in stages for j in range(blocks_per_stage[s])]
    if len(target_rates) > 0:
        if schedule:
            raise ValueError(f"set either cfg.MODEL.AIG.TARGET_RATES or cfg.MODEL.AIG.SCHEDULE, not both "
                             f"(got SCHEDULE={schedule!r} and {len(target_rates)} rates)")
        if len(target_rates) != len(names):
            counts = ", ".join(f"{s}: {blocks_per_stage[s]}" for s in stages)
            raise ValueError(f"cfg.MODEL.AIG.TARGET_RATES has {len(target_rates)} entries, but cfg.MODEL.AIG.STAGES "
                             f"{list(stages)} have {len(names)} units ({counts})")
        rates, key = list(target_rates), "cfg.MODEL.AIG.TARGET_RATES"
    elif schedule:
        rates, key = seed_schedule(schedule, t, blocks_per_stage, stages), "cfg.MODEL.AIG.TARGET_RATE"
    else:
        rates, key = [t] * len(names), "cfg.MODEL.AIG.TARGET_RATE"
    out: Dict[str, float] = {}
    for name, r in zip(names, rates):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) <= 1.0:
            raise ValueError(f"{key}: the target rate of unit {name} must be a number in [0, 1], got {r!r}")
        out[name] = float(r)
    return out


def threshold_gate(logits: torch.Tensor) -> torch.Tensor:
    """Deterministic gate: (B,2) [off, on] logits -> (B,) bool, on iff softmax(logits)[:, 1] >= 0.5."""
    return logits[:, 1] >= logits[:, 0]


def gumbel_gate(logits: torch.Tensor, temperature: float = 1.0,
                noise: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Straight-through Gumbel-softmax gate: (B,2) logits -> (gate (B,), soft (B,)).

    soft = softmax((logits + G) / T)[:, 1] with G ~ Gumbel(0, 1) (or ``noise``); gate is the hard
    sample (1 iff soft >= 0.5) in value and has the gradient of ``soft``.
    """
    if noise is None:
        u = torch.rand_like(logits)
        noise = -torch.log(-torch.log(u + 1e-10) + 1e-10)
    soft = F.softmax((logits + noise) / temperature, dim=1)[:, 1]
    hard = (soft >= 0.5).to(soft.dtype)
    return hard + (soft - soft.detach()), soft


def target_rate_loss(gates: Sequence[torch.Tensor], targets: Sequence[float], weight: float) -> torch.Tensor:
    """weight * mean over units of (t_u - mean_b gate_u)^2; gates: list of (B,) per gated unit."""
    if len(gates) != len(targets):
        raise ValueError(f"target_rate_loss: {len(gates)} gates but {len(targets)} target rates")
    if not gates:
        return torch.zeros(())
    terms = [(float(t) - g.float().mean()) ** 2 for g, t in zip(gates, targets)]
    return weight * torch.stack(terms).mean()


class _LayerNorm1x1(nn.GroupNorm):
    """LayerNorm over the channels of a (B,C,1,1) tensor (batch-size independent gate norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__(1, channels)


class AIGGate(nn.Module):
    """pooled unit input (B,C) -> [off, on] logits (B,2): 1x1 conv -> norm -> ReLU -> 1x1 conv."""

    def __init__(self, channels: int, hidden: int = 16, norm: str = "BN", bias_init: Sequence[float] = (0.1, 2.0)) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.norm = _LayerNorm1x1(hidden) if norm == "LN" else (get_norm(norm, hidden) or nn.Identity())
        self.fc2 = nn.Conv2d(hidden, 2, 1, bias=True)
        nn.init.normal_(self.fc1.weight, std=(2.0 / hidden) ** 0.5)  # as the original's ImageNet init
        nn.init.zeros_(self.fc1.bias)
        nn.init.normal_(self.fc2.weight, std=0.001)  # "last layer of the gate with low variance"
        with torch.no_grad():
            self.fc2.bias.copy_(torch.tensor([float(b) for b in bias_init]))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.training and pooled.shape[0] < 2 and isinstance(self.norm, nn.modules.batchnorm._BatchNorm):
            raise ValueError("cfg.MODEL.AIG.GATE_NORM is a batch norm, which needs >= 2 images per process in "
                             "training (its input is one vector per image); use 'LN' or fewer processes")
        h = F.relu(self.norm(self.fc1(pooled[:, :, None, None])))
        return self.fc2(h)[:, :, 0, 0]

    def flops(self) -> float:
        return conv_flops(self.fc1, 1) + conv_flops(self.fc2, 1)


class AIGResNet(UnitSkippingResNet):
    """detectron2 ResNet with an :class:`AIGGate` (``resXX.j.gate``) on every unit whose target rate is < 1.

    ``last_gates``: gated unit -> (B,) straight-through gate of the last training forward.
    ``extra_losses()`` -> {"loss_target_rate": ...} for that forward.
    """

    family = "aig"
    relu_projection = True
    keep_trainable = ("gate",)

    def __init__(self, stem: nn.Module, stages: List[List[nn.Module]], *, out_features: List[str], freeze_at: int,
                 target_rates: Dict[str, float], loss_weight: float = 1.0, gate_hidden: int = 16,
                 gate_norm: str = "BN", gate_bias_init: Sequence[float] = (0.1, 2.0), temperature: float = 1.0,
                 test_gates: str = "threshold") -> None:
        skip_stages = sorted({n.split(".")[0] for n in target_rates})
        super().__init__(stem, stages, out_features=out_features, skip_stages=skip_stages)
        if set(target_rates) != set(self.unit_names):
            raise ValueError(f"AIGResNet: target rates given for {sorted(target_rates)}, expected {self.unit_names}")
        if test_gates not in TEST_GATE_MODES:
            raise ValueError(f"cfg.MODEL.AIG.TEST_GATES must be one of {TEST_GATE_MODES}, got {test_gates!r}")
        if not temperature > 0:
            raise ValueError(f"cfg.MODEL.AIG.TEMPERATURE must be > 0, got {temperature}")
        if len(gate_bias_init) != 2:
            raise ValueError(f"cfg.MODEL.AIG.GATE_BIAS_INIT needs 2 values [off, on], got {list(gate_bias_init)}")
        self.target_rates = {n: target_rates[n] for n in self.unit_names}
        self.gated_units = [n for n in self.unit_names if self.target_rates[n] < 1.0]
        self.loss_weight, self.temperature, self.test_gates = float(loss_weight), float(temperature), test_gates
        for name in self.gated_units:
            block = self._block(name)
            block.add_module("gate", AIGGate(block.in_channels, gate_hidden, gate_norm, gate_bias_init))
        self.last_gates: Dict[str, torch.Tensor] = {}
        self.freeze(freeze_at)

    def _block(self, name: str) -> nn.Module:
        stage, j = name.split(".")
        return getattr(self, stage)[int(j)]

    def _logits(self, block: nn.Module, x: torch.Tensor, stride: int) -> torch.Tensor:
        return block.gate(pool_valid(x, self.image_sizes, stride))

    def _decide(self, name, block, x, stride):
        if not hasattr(block, "gate"):
            return None
        logits = self._logits(block, x, stride)
        if self.test_gates == "sample":
            return gumbel_gate(logits, self.temperature)[0] > 0.5
        return threshold_gate(logits)

    def _train_unit(self, name, block, x, stride):
        ones = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        if not hasattr(block, "gate"):
            return block(x), ones
        gate, _ = gumbel_gate(self._logits(block, x, stride), self.temperature)
        self.last_gates[name] = gate
        out = shortcut_branch(block, x) + gate.view(-1, 1, 1, 1).to(x.dtype) * residual_branch(block, x)
        return F.relu_(out), gate.detach() > 0.5

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        self.last_gates = {}
        return super().forward(x)

    def extra_losses(self) -> Dict[str, torch.Tensor]:
        """{"loss_target_rate"} of the last training forward (empty at inference)."""
        if not self.last_gates:
            return {}
        names = [n for n in self.gated_units if n in self.last_gates]
        return {"loss_target_rate": target_rate_loss([self.last_gates[n] for n in names],
                                                     [self.target_rates[n] for n in names], self.loss_weight)}

    def extra_flops(self, index: int) -> float:
        return sum(self._block(n).gate.flops() for n in self.gated_units)


def aig_from_parts(cfg, stem: nn.Module, stages: List[List[nn.Module]], out_features: List[str],
                   freeze_at: int) -> AIGResNet:
    """An :class:`AIGResNet` from a stem + stages (detector or classifier) and cfg.MODEL.AIG."""
    a = cfg.MODEL.AIG
    blocks = built_stage_sizes(stages, out_features)
    stages_in_order = check_stage_list("cfg.MODEL.AIG.STAGES", list(a.STAGES), blocks)
    rates = resolve_target_rates(blocks, stages_in_order, list(a.TARGET_RATES), a.SCHEDULE, float(a.TARGET_RATE))
    return AIGResNet(stem, stages, out_features=out_features, freeze_at=freeze_at, target_rates=rates,
                     loss_weight=float(a.LOSS_WEIGHT), gate_hidden=int(a.GATE_HIDDEN), gate_norm=a.GATE_NORM,
                     gate_bias_init=list(a.GATE_BIAS_INIT), temperature=float(a.TEMPERATURE), test_gates=a.TEST_GATES)


@BACKBONE_REGISTRY.register()
def build_aig_resnet_backbone(cfg, input_shape: ShapeSpec) -> AIGResNet:
    """ConvNet-AIG ResNet from cfg.MODEL.RESNETS (as detectron2's builder) and cfg.MODEL.AIG."""
    if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":
        raise ValueError(f"cfg.MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r} does not add the AIG "
                         f"target-rate loss nor per-image FLOPs; use 'AdaptiveRCNN' with build_aig_resnet_backbone")
    stem, stages = make_resnet_stages(cfg, input_shape.channels)
    out_features = list(cfg.MODEL.RESNETS.OUT_FEATURES)
    return aig_from_parts(cfg, stem, stages, out_features, cfg.MODEL.BACKBONE.FREEZE_AT)
