"""detectron2's TrainingSampler that can continue its infinite index stream at any position."""
import itertools
from typing import Iterator, Optional

from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler"]


class ResumableTrainingSampler(TrainingSampler):
    """The same stream as ``TrainingSampler(size, shuffle, seed)`` (shard ``rank::world_size`` of
    ``shuffle(range(size)) + shuffle(range(size)) + ...``), starting after ``start`` indices of this
    rank's shard. A run resumed at iteration ``i`` sets ``start = i * images_per_rank`` and sees
    exactly the images an uninterrupted run would have seen from iteration ``i`` on.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None) -> None:
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.start = 0

    @property
    def seed(self) -> int:
        return self._seed

    def set_seed(self, seed: int) -> None:
        """Use ``seed`` for the stream (must be equal on every rank)."""
        self._seed = int(seed)

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank's shard at the next ``iter()``."""
        if start < 0:
            raise ValueError(f"ResumableTrainingSampler: start must be >= 0, got {start}")
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        first = self._rank + self.start * self._world_size
        yield from itertools.islice(self._infinite_indices(), first, None, self._world_size)
