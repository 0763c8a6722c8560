"""The adaptive-backbone contract: what the detector and the classifier may call on any backbone.

Every family (SACT / ACT, ConvNet-AIG, BlockDrop, dense) is a detectron2 ``ResNet`` that mixes in
:class:`AdaptiveBackbone` (``class SACTResNet(ResNet, AdaptiveBackbone)``) and overrides what it
adds; the base class provides the dense defaults. Calling order per batch:
``set_image_sizes`` -> forward -> ``extra_losses`` / ``log_statistics`` (training) or
``image_flops`` / ``image_outputs`` (any forward / inference).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .flop_rules import dense_resnet_flops
from .freezing import freeze_resnet

__all__ = ["AdaptiveBackbone", "FAMILIES"]

FAMILIES = ("sact", "act", "aig", "blockdrop", "dense")


class AdaptiveBackbone:
    """Mixin for a detectron2 ResNet (``stem``, ``stages``, ``stage_names``) with per-image adaptive computation.

    ``family``: one of :data:`FAMILIES`. Subclasses call :meth:`_record_input` at the start of their
    forward so that per-image results refer to the images of that batch, and define ``freeze`` as
    ``AdaptiveBackbone.freeze(self, freeze_at)`` (``ResNet.freeze`` comes first in their MRO).
    """

    family: str = "dense"
    _pending_sizes: Optional[List[Tuple[int, int]]] = None  # from set_image_sizes, for the next forward
    _given_sizes: Optional[List[Tuple[int, int]]] = None  # what the last forward was given (None: not given)
    _batch_sizes: Optional[List[Tuple[int, int]]] = None  # unpadded (h, w) of each image of the last forward

    def set_image_sizes(self, sizes: Optional[Sequence[Sequence[int]]]) -> None:
        """Unpadded (h, w) of every image of the next forward's batch (not calling it, or None: every
        image fills the batch tensor). The next forward consumes them."""
        self._pending_sizes = None if sizes is None else [(int(h), int(w)) for h, w in sizes]

    @property
    def image_sizes(self) -> Optional[List[Tuple[int, int]]]:
        """The unpadded sizes for the coming forward, else those the last forward was given (None: not given)."""
        return self._pending_sizes if self._pending_sizes is not None else self._given_sizes

    def _record_input(self, x: torch.Tensor) -> List[Tuple[int, int]]:
        """Start of a forward on the batch ``x`` (B,C,H,W): take the sizes given by :meth:`set_image_sizes`
        (default: (H, W) for every image) as the per-image sizes of this forward; returns them."""
        b, h, w = x.shape[0], int(x.shape[-2]), int(x.shape[-1])
        given, self._pending_sizes = self._pending_sizes, None
        if given is not None and len(given) != b:
            raise ValueError(f"{type(self).__name__}: set_image_sizes gave {len(given)} sizes for a batch of {b}")
        self._given_sizes = given
        self._batch_sizes = list(given) if given is not None else [(h, w)] * b
        return self._batch_sizes

    def image_size(self, index: int) -> Tuple[int, int]:
        """Unpadded (h, w) of image ``index`` of the last forward."""
        if self._batch_sizes is None:
            raise RuntimeError(f"{type(self).__name__}: no forward yet, no per-image results")
        return self._batch_sizes[index]

    def extra_losses(self) -> Dict[str, torch.Tensor]:
        """The family's own training losses of the last (training) forward; dense: none."""
        return {}

    def image_flops(self, index: int) -> float:
        """FLOPs of image ``index`` of the last forward on its unpadded size; dense: every unit runs."""
        return dense_resnet_flops(self, self.image_size(index))[0]

    def image_outputs(self, index: int) -> Dict[str, Any]:
        """Per-image outputs of the last inference forward (ponder maps, unit policy); dense: none."""
        return {}

    def log_statistics(self) -> Dict[str, float]:
        """Scalars for the event storage after a training forward; dense: none."""
        return {}

    def set_execution(self, execution: str, sparse_max_density: Optional[float] = None) -> None:
        """Inference path: "dense" | "sparse" | "auto"; families without sparse kernels accept only "dense"."""
        if execution != "dense":
            raise ValueError(f"{type(self).__name__} ({self.family}) has no sparse kernels: execution must be "
                             f"'dense', got {execution!r}")

    #: children of a unit that freezing leaves trainable (the family's own branches)
    keep_trainable: Tuple[str, ...] = ()

    def freeze(self, freeze_at: int = 0) -> "AdaptiveBackbone":
        """detectron2's FREEZE_AT: the stem and the first freeze_at - 1 stages; ``keep_trainable`` children stay."""
        freeze_resnet(self, freeze_at, self.keep_trainable)
        return self
