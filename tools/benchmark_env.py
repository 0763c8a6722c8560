"""Process settings every benchmark tool shares; import it before torch (``import benchmark_env`` first).

Both sides of every comparison run in the same process with the same settings:

* Transparent huge pages for PyTorch's CPU allocations (``THP_MEM_ALLOC_ENABLE=1``, read once, before torch
  allocates): a fresh multi-MB tensor then costs one page fault per 2 MiB instead of per 4 KiB.
* Freed memory stays in the process (``SACT_KEEP_FREED_MEMORY=1``: glibc's ``mallopt``, no mmap'd chunks and no
  trimming of the heap): a 38 MB feature map freed by one layer is reused by the next without page faults. glibc
  otherwise gives large freed blocks back to the OS (every block above 32 MiB is a fresh mmap, unmapped on free),
  so each such map page-faults again; on a VM with free page reporting (virtio-balloon, as on the machine of
  docs/results/) those faults also wait for the host and vary several-fold between calls.

``THP_MEM_ALLOC_ENABLE=0`` / ``SACT_KEEP_FREED_MEMORY=0`` in the environment measure without them.
"""
import ctypes
import ctypes.util
import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
os.environ.setdefault("SACT_KEEP_FREED_MEMORY", "1")

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>
_NEVER_TRIM = 2 ** 31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Ask glibc malloc to keep freed memory for reuse (no mmap'd chunks, no heap trimming); whether it did
    (False without glibc's ``mallopt``, e.g. macOS; musl's accepts nothing)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, _NEVER_TRIM) == 1


KEEP_FREED_MEMORY = os.environ["SACT_KEEP_FREED_MEMORY"] == "1" and keep_freed_memory()


def describe() -> str:
    """The settings, for the header of a result file."""
    return (f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')}, "
            f"freed memory kept in the process: {'yes' if KEEP_FREED_MEMORY else 'no'}")
