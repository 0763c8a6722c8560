"""Halting arithmetic shared by ACT (one score per image) and SACT (one score per position).

Unit ``l`` produces a state ``x^l`` and a halting score ``h^l``; the last unit has ``h^L = 1``.
A position halts at the first unit where the running sum of ``h`` reaches ``1 - eps``. Its
output is ``sum_l p^l x^l`` with ``p^l = h^l`` before the halt and the remainder
``R = 1 - sum_{l<N} h^l`` at the halting unit ``N``. The ponder cost is ``rho = N + R``; only
``R`` carries gradient, so ``d rho / d h^l = -1`` for ``l < N`` and ``0`` otherwise.

Precision: the state (running sum, N, R, rho) and the returned weights ``p^l`` are kept in
float32 (float64 for float64 scores) whatever the activations' dtype, so that under
``torch.autocast`` (bf16 / fp16 activations) a 23-unit stage neither rounds 0.99 to 0.988 nor
drops small increments; scores are cast to that dtype before they are accumulated.
"""
from typing import Optional

import torch

__all__ = ["HaltingState", "check_eps", "state_dtype", "capturing_graph"]


def check_eps(eps: float) -> float:
    """Validate the halting threshold ``eps`` (must lie in the open interval (0, 1))."""
    eps = float(eps)
    if not 0.0 < eps < 1.0:
        raise ValueError(f"SACT halting eps must be in (0, 1), got {eps}")
    return eps


def capturing_graph() -> bool:
    """True while ``torch.jit.trace`` / ``torch.export`` records the model.

    A recorded graph cannot branch on tensor values: adaptive stages then run every unit masked
    (positions that halted keep their state and get weight 0, so the outputs equal the eager
    ones) instead of stopping once every position halted or running the sparse kernels.
    """
    if torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_exporting") and compiler.is_exporting())


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the halting state for scores / activations of ``dtype``: at least float32 (float64 stays)."""
    return torch.promote_types(dtype, torch.float32) if dtype.is_floating_point else torch.float32


class HaltingState:
    """Running halting state of one adaptive stage.

    Usage::

        state = HaltingState(eps=0.01)
        for l in range(L):
            w = state.step(h[l], last=(l == L - 1))  # h: (B,1,H,W) or (B,1,1,1)
            out = out + w * x[l]

    After every step, ``active`` (bool, shape of ``h``) marks the positions that run the next
    unit. ``ponder_cost`` (rho), ``num_units`` (N) and ``remainder`` (R) are final once a step
    with ``last=True`` has been taken. All of them and the weights are in :func:`state_dtype` of
    the first score (float32 for bf16 / fp16 / fp32); multiply ``w.to(x.dtype) * x`` to stay in
    the activations' dtype, or ``w * x`` to accumulate in float32.
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
            the weight ``p^l`` of this unit's output, same shape as ``h``, in the state's dtype.
        """
        if self.finished:
            raise RuntimeError("HaltingState.step called after the last unit")
        ref = h if h is not None else (like if like is not None else self.cumsum)
        if ref is None:
            raise ValueError("the first step needs a halting score (or `like`) to know the shape")
        if self.cumsum is None:
            self._start(ref)
        if h is not None:
            h = h.to(self.cumsum.dtype)  # accumulate bf16 / fp16 scores in float32 (differentiable cast)
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

    def _start(self, ref: torch.Tensor) -> None:
        """The state before the first unit, shaped like ``ref``: nothing accumulated, every position active."""
        self.cumsum = torch.zeros(ref.shape, dtype=state_dtype(ref.dtype), device=ref.device)
        self.active = torch.ones(ref.shape, dtype=torch.bool, device=ref.device)
        self.num_units = torch.zeros_like(self.cumsum)
        self.remainder = torch.zeros_like(self.cumsum)

    @property
    def ponder_cost(self) -> torch.Tensor:
        """rho = N + R per position; gradient flows through R only."""
        if self.num_units is None:
            raise RuntimeError("no step taken yet")
        return self.num_units + self.remainder
