"""Small helpers with no detectron2 or model dependencies (atomic file writes)."""
from .atomic import TMP_PREFIX, atomic_torch_save, atomic_write, remove_stale_temporaries

__all__ = ["TMP_PREFIX", "atomic_torch_save", "atomic_write", "remove_stale_temporaries"]
