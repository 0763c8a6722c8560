"""Halting arithmetic shared by ACT (one score per image) and SACT (one score per position).

Unit ``l`` produces a state ``x^l`` and a halting score ``h^l``; the last unit has ``h^L = 1``.
A position halts at the first unit where the running sum of ``h`` reaches ``1 - eps``. Its
output is ``sum_l p^l x^l`` with ``p^l = h^l`` before the halt and the remainder
``R = 1 - sum_{l<N} h^l`` at the halting unit ``N``. The ponder cost is ``rho = N + R``; only
``R`` carries gradient, so ``d rho / d h^l = -1`` for ``l < N`` and ``0`` otherwise.
"""
from typing import Optional

import torch

__all__ = ["HaltingState", "check_eps"]


def check_eps(eps: float) -> float:
    """Validate the halting threshold ``eps`` (must lie in the open interval (0, 1))."""
    eps = float(eps)
    if not 0.0 < eps < 1.0:
        raise ValueError(f"SACT halting eps must be in (0, 1), got {eps}")
    return eps


class HaltingState:
    """Running halting state of one adaptive stage.

    Usage::

        state = HaltingState(eps=0.01)
        for l in range(L):
            w = state.step(h[l], last=(l == L - 1))  # h: (B,1,H,W) or (B,1,1,1)
            out = out + w * x[l]

    After every step, ``active`` (bool, shape of ``h``) marks the positions that run the next
    unit. ``ponder_cost`` (rho), ``num_units`` (N) and ``remainder`` (R) are final once a step
    with ``last=True`` has been taken.
    """

    def __init__(self, eps: float = 0.01) -> None:
        self.eps = check_eps(eps)
        self.cumsum: Optional[torch.Tensor] = None  # sum of h over executed, non-halting units
        self.active: Optional[torch.Tensor] = None  # bool, positions still running
        self.num_units: Optional[torch.Tensor] = None  # N, float
        self.remainder: Optional[torch.Tensor] = None  # R, differentiable
        self.finished = False

    def step(self, h: Optional[torch.Tensor], last: bool = False, like: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Consume the halting score of the unit just executed.

        Args:
            h: halting score in [0, 1], (B,1,H,W) for SACT or (B,1,1,1) for ACT; ignored (may be
                None) when ``last`` is True, in which case ``like`` or the previous step's shape
                gives the shape.
            last: whether this is the stage's last unit (its score is taken as 1).
        Returns:
            the weight ``p^l`` of this unit's output, same shape as ``h``.
        """
        if self.finished:
            raise RuntimeError("HaltingState.step called after the last unit")
        ref = h if h is not None else (like if like is not None else self.cumsum)
        if ref is None:
            raise ValueError("the first step needs a halting score (or `like`) to know the shape")
        if self.cumsum is None:
            self.cumsum = torch.zeros_like(ref, dtype=torch.float32 if not ref.is_floating_point() else ref.dtype)
            self.active = torch.ones(ref.shape, dtype=torch.bool, device=ref.device)
            self.num_units = torch.zeros_like(self.cumsum)
            self.remainder = torch.zeros_like(self.cumsum)
        active = self.active
        remainder_now = 1.0 - self.cumsum
        if last:
            halting = active
            weight = torch.where(active, remainder_now, torch.zeros_like(remainder_now))
            new_cumsum = self.cumsum
        else:
            new_cumsum = self.cumsum + h
            halting = active & (new_cumsum >= 1.0 - self.eps)
            running = active & ~halting
            zero = torch.zeros_like(remainder_now)
            weight = torch.where(running, h, torch.where(halting, remainder_now, zero))
            new_cumsum = torch.where(running, new_cumsum, self.cumsum)
        self.num_units = self.num_units + active.to(self.num_units.dtype)
        self.remainder = torch.where(halting, remainder_now, self.remainder)
        self.cumsum = new_cumsum
        self.active = active & ~halting
        if last:
            self.finished = True
        return weight

    @property
    def ponder_cost(self) -> torch.Tensor:
        """rho = N + R per position; gradient flows through R only."""
        if self.num_units is None:
            raise RuntimeError("no step taken yet")
        return self.num_units + self.remainder
