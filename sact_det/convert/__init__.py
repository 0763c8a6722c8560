"""Converters of foreign weights into sact_det checkpoints (no TensorFlow needed).

- :mod:`.tf_checkpoint`: reader of TensorFlow V2 checkpoints (``.index`` + ``.data-*``, or the
  released ``.tar.gz``) into numpy arrays.
- :mod:`.original`: the original SACT code's variable names -> sact_det classifier / detector names.
"""
from .tf_checkpoint import TFCheckpoint, TFCheckpointError, crc32c, masked_crc32c, read_tf_checkpoint

__all__ = ["TFCheckpoint", "TFCheckpointError", "crc32c", "masked_crc32c", "read_tf_checkpoint"]
