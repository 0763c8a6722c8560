"""Tracing / exporting a SACT backbone with its ponder outputs.

``torch.jit.trace`` and ``torch.export`` record one run of the Python code, so a branch on tensor
values would be frozen to the recorded image. Adaptive stages therefore run every unit masked
while a graph is recorded (:func:`.act.capturing_graph`): positions that halted keep their state
and get weight 0, so the recorded graph gives the eager outputs on every image (it computes
every unit everywhere, so it is not faster than the dense network; the sparse / auto execution
is eager-only). Ponder maps are Python attributes of the stages (``last_ponder``), which a
recorded graph does not update; :class:`PonderOutputs` returns them as graph outputs::

    traced = torch.jit.trace(PonderOutputs(backbone.eval()), image, strict=False)
    out = traced(other_image)  # {"res4": features, "res4/ponder_cost": rho, "res4/num_units": N, ...}
"""
from typing import Dict

import torch
from torch import nn

from .backbone import SACTResNet

__all__ = ["PonderOutputs"]


class PonderOutputs(nn.Module):
    """A SACT backbone whose forward also returns its ponder maps (for tracing / export).

    forward: x (B,3,H,W) -> dict with the backbone's features ``{name: (B,C,H/s,W/s)}`` and, per
    adaptive stage ``name``, ``"{name}/ponder_cost"`` (rho = N + R) and ``"{name}/num_units"`` (N),
    both (B,1,H/s,W/s) in the halting state's dtype (float32 under autocast). Unit ``l >= 1`` of a
    stage ran at the positions where ``num_units > l``, which is what FLOP counts need.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        if not isinstance(backbone, SACTResNet):  # the SACT / ACT family (MODE none: no ponder outputs)
            raise TypeError(f"PonderOutputs needs a SACTResNet (SACT / ACT family, with `last_ponder`), "
                            f"got {type(backbone).__name__}")
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = dict(self.backbone(x))
        for name, ponder in self.backbone.last_ponder.items():
            out[f"{name}/ponder_cost"] = ponder.ponder_cost
            out[f"{name}/num_units"] = ponder.num_units
        return out
