"""What the AIG / BlockDrop seeds print, and a picture of a per-image unit policy.

``unit_policy_stats`` turns per-image policies (unit name -> executed) and FLOPs into: block usage
mean / std (units executed per image), FLOPs per image mean / std, number of unique policies
(BlockDrop's test.py) and per-unit execution rates (ConvNet-AIG's gate activation rates).
``UnitPolicyEvaluator`` collects them from detector outputs ("unit_policy", "flops"); outputs
without "unit_policy" (SACT / dense models) are ignored and it then reports nothing.
"""
import itertools
import logging
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

__all__ = ["unit_policy_stats", "format_unit_policy_stats", "UnitPolicyEvaluator", "draw_unit_policy"]

logger = logging.getLogger(__name__)


def unit_policy_stats(policies: Sequence[Dict[str, bool]], flops: Optional[Sequence[float]] = None) -> dict:
    """Stats of N per-image policies (same unit names, in order) and optional per-image FLOPs.

    Returns {"num_images", "num_units", "block_usage_mean", "block_usage_std", "unique_policies",
    "unit_rates": {unit: rate}, ["flops_mean", "flops_std"]}; std is the population std (numpy default,
    as BlockDrop's test.py uses for FLOPs).
    """
    if not policies:
        raise ValueError("unit_policy_stats needs at least one policy")
    names = list(policies[0])
    for p in policies:
        if list(p) != names:
            raise ValueError(f"unit_policy_stats: policies name different units ({list(p)} vs {names})")
    m = np.array([[bool(p[n]) for n in names] for p in policies], dtype=bool)
    used = m.sum(axis=1).astype(np.float64)
    out = {"num_images": int(m.shape[0]), "num_units": len(names), "block_usage_mean": float(used.mean()),
           "block_usage_std": float(used.std()), "unique_policies": len({row.tobytes() for row in m}),
           "unit_rates": OrderedDict((n, float(r)) for n, r in zip(names, m.mean(axis=0)))}
    if flops is not None:
        f = np.asarray(list(flops), dtype=np.float64)
        if f.shape[0] != m.shape[0]:
            raise ValueError(f"unit_policy_stats: {f.shape[0]} FLOP values for {m.shape[0]} policies")
        out["flops_mean"], out["flops_std"] = float(f.mean()), float(f.std())
    return out


def format_unit_policy_stats(stats: dict) -> str:
    """The seeds' printout: block usage, FLOPs/img, unique policies, per-unit execution rates."""
    lines = [f"Block Usage: {stats['block_usage_mean']:.3f} \u00b1 {stats['block_usage_std']:.3f} "
             f"(of {stats['num_units']} units, {stats['num_images']} images)"]
    if "flops_mean" in stats:
        lines.append(f"FLOPs/img: {stats['flops_mean']:.2E} \u00b1 {stats['flops_std']:.2E}")
    lines.append(f"Unique Policies: {stats['unique_policies']}")
    rates = " ".join(f"{n}:{r:.2f}" for n, r in stats["unit_rates"].items())
    lines.append(f"Unit execution rates: {rates}")
    return "\n".join(lines)


class UnitPolicyEvaluator(DatasetEvaluator):
    """Collects outputs' "unit_policy" and "flops"["backbone"]; prints and returns the seeds' statistics."""

    def __init__(self, distributed: bool = True, flops_key: str = "backbone") -> None:
        self._distributed, self._flops_key = distributed, flops_key
        self.reset()

    def reset(self) -> None:
        self._policies: List[Dict[str, bool]] = []
        self._flops: List[float] = []

    def process(self, inputs, outputs) -> None:
        for out in outputs:
            if "unit_policy" in out:
                self._policies.append(dict(out["unit_policy"]))
                self._flops.append(float(out["flops"][self._flops_key]))

    def evaluate(self):
        policies, flops = self._policies, self._flops
        if self._distributed:
            comm.synchronize()
            policies = list(itertools.chain(*comm.gather(policies, dst=0)))
            flops = list(itertools.chain(*comm.gather(flops, dst=0)))
            if not comm.is_main_process():
                return {}
        if not policies:
            return {}
        stats = unit_policy_stats(policies, flops)
        text = format_unit_policy_stats(stats)
        logger.info("Unit policy statistics:\n%s", text)
        flat = {k: float(v) for k, v in stats.items() if k != "unit_rates"}
        flat.update({f"rate/{n}": r for n, r in stats["unit_rates"].items()})
        return OrderedDict(unit_policy=flat)


def draw_unit_policy(policy: Dict[str, float], cell: int = 16) -> np.ndarray:
    """(H,W,3) uint8 grid: one row per stage, one cell per unit; brightness = executed (or rate in [0, 1]).

    Executed units are drawn orange, skipped units dark blue; rates blend the two.
    """
    stages: Dict[str, List[float]] = OrderedDict()
    for name, value in policy.items():
        stage, _ = name.rsplit(".", 1)
        stages.setdefault(stage, []).append(float(value))
    width = max(len(v) for v in stages.values())
    on, off = np.array([255, 140, 0], dtype=np.float64), np.array([25, 35, 90], dtype=np.float64)
    img = np.full((len(stages) * cell, width * cell, 3), 255, dtype=np.uint8)
    for r, values in enumerate(stages.values()):
        for c, v in enumerate(values):
            color = off + (on - off) * min(max(v, 0.0), 1.0)
            img[r * cell + 1:(r + 1) * cell - 1, c * cell + 1:(c + 1) * cell - 1] = color.astype(np.uint8)
    return img
