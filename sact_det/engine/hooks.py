"""Training hooks: per-iteration RNG seeds (exact resume), ponder-cost weight warm-up, BN statistics sync."""
import random
from typing import Any, Dict

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["PerIterationSeed", "TauWarmup", "AverageBuffers", "unwrap_model", "iteration_seed", "average_buffers"]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def iteration_seed(base_seed: int, rank: int, iteration: int) -> int:
    """A 31-bit seed that depends only on (base_seed, rank, iteration)."""
    return int(np.random.SeedSequence([int(base_seed) & 0xFFFFFFFF, int(rank), int(iteration)]).generate_state(1)[0]
               & 0x7FFFFFFF)


class PerIterationSeed(HookBase):
    """Before every iteration, seed torch / numpy / random from (base seed, rank, iteration).

    The random numbers drawn in iteration ``i`` (data augmentation in the main process, RPN and
    ROI sampling, ...) then do not depend on the history, so a run resumed from a checkpoint
    continues exactly like an uninterrupted one. The base seed is stored in the checkpoint.
    """

    def __init__(self, base_seed: int) -> None:
        self.base_seed = int(base_seed)

    def before_step(self) -> None:
        seed = iteration_seed(self.base_seed, comm.get_rank(), self.trainer.iter)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    def state_dict(self) -> Dict[str, Any]:
        return {"base_seed": self.base_seed}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.base_seed = int(state["base_seed"])


class TauWarmup(HookBase):
    """Ramp the model's ponder-cost weight ``tau`` linearly from 0 to its configured value.

    tau(i) = 0 for i < start, tau * (i - start + 1) / iters for start <= i < start + iters,
    tau afterwards. Logged as ``ponder/tau``. ``tau`` lives on the SACT / ACT backbone (``model.backbone``)
    or on the model itself; a no-op when neither has one.
    """

    def __init__(self, model: torch.nn.Module, start: int, iters: int) -> None:
        if start < 0 or iters < 0:
            raise ValueError(f"cfg.SACT_TRAIN.TAU_WARMUP_START / TAU_WARMUP_ITERS must be >= 0, got {start}, {iters}")
        model = unwrap_model(model)
        backbone = getattr(model, "backbone", None)
        self._model = backbone if hasattr(backbone, "tau") else model
        self.target = float(getattr(self._model, "tau", 0.0))
        self.start, self.iters = int(start), int(iters)

    def tau_at(self, iteration: int) -> float:
        if iteration < self.start:
            return 0.0
        if self.iters == 0 or iteration >= self.start + self.iters:
            return self.target
        return self.target * (iteration - self.start + 1) / self.iters

    def before_step(self) -> None:
        if not hasattr(self._model, "tau"):
            return
        self._model.tau = self.tau_at(self.trainer.iter)
        self.trainer.storage.put_scalar("ponder/tau", self._model.tau, smoothing_hint=False)

    def after_train(self) -> None:
        if hasattr(self._model, "tau"):
            self._model.tau = self.target


def average_buffers(model: torch.nn.Module) -> int:
    """All-reduce-average every floating-point buffer (BN running statistics) over the ranks.

    Returns how many buffers were averaged (0 in a single process).
    """
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    if comm.get_world_size() == 1:
        return 0
    bufs = [b for b in unwrap_model(model).buffers() if b.is_floating_point()]
    if not bufs:
        return 0
    flat = _flatten_dense_tensors(bufs)
    dist.all_reduce(flat)
    flat /= comm.get_world_size()
    for b, synced in zip(bufs, _unflatten_dense_tensors(flat, bufs)):
        b.copy_(synced)
    return len(bufs)


class AverageBuffers(HookBase):
    """After every iteration, average BN running statistics over the ranks.

    Every rank then holds identical weights and statistics (DDP syncs gradients, not buffers), so
    distributed evaluation and rank 0's checkpoints use statistics of all ranks' data.
    """

    def after_step(self) -> None:
        with torch.no_grad():
            average_buffers(self.trainer.model)
