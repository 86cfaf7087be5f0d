"""Process memory tuning, applied once at start-up.

Batch buffers are tens of MB and short-lived. glibc's dynamic mmap threshold climbs to 32 MB after the first such
buffer is freed, after which they come from per-thread heap arenas that keep their pages: RSS then grows with
fragmentation instead of staying at what is in flight. A fixed 1 MiB threshold sends every large buffer to mmap,
so freeing it returns the memory at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def return_large_buffers_to_the_os() -> bool:
    """Fix glibc's mmap threshold; a no-op (False) on other C libraries."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
