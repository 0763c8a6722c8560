"""Crash-safe file writes: the one place sact_det writes checkpoints, tags and exported weights.

``atomic_write(path, write_fn)`` lets ``write_fn`` fill a temporary file next to ``path`` (named
``TMP_PREFIX + basename + ".<random>"``), flushes it to disk and renames it over ``path``
(``os.replace`` is atomic on POSIX and Windows), then syncs the folder so the rename is durable.
Readers see the old complete file or the new complete file, never a partial one. A writer that
raises leaves ``path`` untouched and removes its temporary; a process killed mid-write leaves a
temporary that ``remove_stale_temporaries(folder)`` deletes on the next start.
"""
import glob
import os
import tempfile
from typing import IO, Any, Callable

import torch

__all__ = ["TMP_PREFIX", "atomic_write", "atomic_torch_save", "remove_stale_temporaries"]

TMP_PREFIX = ".tmp-"


def _default_mode() -> int:
    """0666 minus the process umask: the mode ``open()`` would give a new file (mkstemp gives 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write_fn: Callable[[IO[bytes]], None]) -> None:
    """Call ``write_fn(f)`` on a binary temporary file next to ``path``, fsync it, rename it to ``path``.

    The folder is created if needed. If ``write_fn`` (or anything before the rename) raises, the
    temporary is removed, ``path`` keeps its previous content and the exception propagates.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + os.path.basename(path) + ".", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_folder(folder)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temporaries(folder: str) -> int:
    """Delete the temporaries :func:`atomic_write` left in ``folder`` when a process was killed
    mid-write; returns how many. Call it only while no other process writes to ``folder``."""
    stale = [p for p in glob.glob(os.path.join(glob.escape(folder), TMP_PREFIX + "*")) if os.path.isfile(p)]
    for p in stale:
        os.remove(p)
    return len(stale)
