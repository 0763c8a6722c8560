"""Process settings every benchmark tool shares; import it before torch (``import benchmark_env`` first).

Transparent huge pages for PyTorch's CPU allocations (read once, before torch allocates): a fresh multi-MB
tensor then costs one page fault per 2 MiB instead of per 4 KiB. Both sides of every comparison run in the
same process with the same setting; THP_MEM_ALLOC_ENABLE=0 in the environment measures without it.
"""
import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
