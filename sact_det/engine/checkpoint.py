"""Crash-safe checkpoints: every file is written to a temporary name and renamed into place.

A run killed while saving leaves the previous checkpoint and the ``last_checkpoint`` tag intact
(``sact_det.utils.atomic``); the tag is updated only after the new file is complete and flushed
to disk.
"""
import os
from typing import Any, Dict

from detectron2.checkpoint import DetectionCheckpointer

from ..utils.atomic import atomic_torch_save, atomic_write, remove_stale_temporaries
from .checks import is_remote

__all__ = ["AtomicDetectionCheckpointer"]


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """detectron2's DetectionCheckpointer whose ``save`` and ``last_checkpoint`` tag are atomic."""

    def _is_local(self) -> bool:
        return not is_remote(str(self.save_dir))

    def save(self, name: str, **kwargs: Any) -> None:
        """Same as Checkpointer.save: ``<save_dir>/<name>.pth`` with model, checkpointables, kwargs."""
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._is_local():
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name must be a plain file name, got {name!r}")
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._is_local():
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda f: f.write(last_filename_basename.encode()))

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files left by runs killed while saving; returns how many."""
        if not self.save_dir or not self.save_to_disk or not self._is_local():
            return 0
        return remove_stale_temporaries(self.save_dir)

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        """DetectionCheckpointer.load; a local ``path`` that does not exist is a FileNotFoundError
        naming it (fvcore asserts). Empty ``path``: nothing is loaded (training from scratch)."""
        if path and not is_remote(path) and not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        return super().load(path, *args, **kwargs)

    def get_checkpoint_file(self) -> str:
        """The file named by ``last_checkpoint``; a clear error if the tag names a missing file."""
        path = super().get_checkpoint_file()
        if path and self._is_local() and not os.path.isfile(path):
            raise FileNotFoundError(
                f"{os.path.join(self.save_dir, 'last_checkpoint')} names {os.path.basename(path)!r}, "
                f"which does not exist in {self.save_dir}; delete the tag or point it at an existing "
                f"model_*.pth to resume"
            )
        return path
