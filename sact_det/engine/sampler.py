"""A training index stream that can continue at any position, and a data loader built on it.

Neither depends on detectron2 internals: the sampler is a plain ``torch.utils.data.Sampler`` that
yields the same stream as detectron2's ``TrainingSampler`` (shard ``rank::world_size`` of
``shuffle(range(size)) + shuffle(range(size)) + ...``), and the loader is an iterable that
starts detectron2's loader only when its first batch is requested.
"""
import itertools
from typing import Iterable, Iterator, List, Optional

import torch
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch.utils.data import Sampler

from .hooks import iteration_seed

__all__ = ["ResumableTrainingSampler", "ResumableTrainLoader"]

_AFTER_FETCH_SALT = 0x2545F491  # keeps the after-fetch seed distinct from PerIterationSeed's


class ResumableTrainingSampler(Sampler):
    """Infinite, shuffled index stream of one rank that can start after ``start`` indices.

    The stream is shard ``rank::world_size`` of ``randperm(size) + randperm(size) + ...`` drawn
    from a ``torch.Generator`` seeded with ``seed`` (detectron2's TrainingSampler stream). A run
    resumed at iteration ``i`` sets ``start = i * images_per_rank`` and sees exactly the images an
    uninterrupted run sees from iteration ``i`` on.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None) -> None:
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"ResumableTrainingSampler: size must be a positive int, got {size!r}")
        self.size = size
        self.shuffle = bool(shuffle)
        self.seed = int(comm.shared_random_seed() if seed is None else seed)
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self.start = 0

    def set_seed(self, seed: int) -> None:
        """Use ``seed`` for the stream (must be equal on every rank)."""
        self.seed = int(seed)

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank's shard at the next ``iter()``."""
        if start < 0:
            raise ValueError(f"ResumableTrainingSampler: start must be >= 0, got {start}")
        self.start = int(start)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            yield from (torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)).tolist()

    def __iter__(self) -> Iterator[int]:
        first = self.rank + self.start * self.world_size
        yield from itertools.islice(self._infinite_indices(), first, None, self.world_size)


class ResumableTrainLoader:
    """Training batches of ``loader`` (built on ``sampler``), started lazily at the first batch.

    ``iter()`` returns a generator that calls ``iter(loader)`` only when the first batch is
    requested, so ``set_position`` (called by ``Trainer.resume_or_load``) still applies to the
    iterator a trainer created when it was constructed. With ``seed_each_batch(base_seed)``,
    torch is reseeded after every fetched batch from (base seed, rank, training iteration): the
    model's random draws then do not depend on whether the loader consumed random numbers while
    starting (it does on its first batch, at iteration 0 or at the resumed iteration).
    """

    def __init__(self, loader: Iterable[List[dict]], sampler: ResumableTrainingSampler) -> None:
        self.loader = loader
        self.sampler = sampler
        self._batch_seed: Optional[int] = None
        self._started = False

    def set_position(self, start_image: int, seed: int) -> None:
        """Continue the stream after ``start_image`` images of this rank's shard, drawn with ``seed``."""
        if self._started:
            raise RuntimeError("ResumableTrainLoader.set_position: the data stream has already started; "
                               "call Trainer.resume_or_load() before train()")
        self.sampler.set_seed(seed)
        self.sampler.set_start(start_image)

    def seed_each_batch(self, base_seed: Optional[int]) -> None:
        """Reseed torch after each batch from (``base_seed``, rank, iteration); None: do not."""
        self._batch_seed = None if base_seed is None else int(base_seed)

    def __iter__(self) -> Iterator[List[dict]]:
        self._started = True
        rank = comm.get_rank()
        for batch in self.loader:
            if self._batch_seed is not None:  # the iteration of the running training loop
                torch.manual_seed(iteration_seed(self._batch_seed, rank, get_event_storage().iter) ^ _AFTER_FETCH_SALT)
            yield batch
