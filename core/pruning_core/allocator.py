"""Keeps freed transfer buffers in the process instead of handing them back to the kernel.

Every chunk of an upload or a download is a fresh ``bytes`` of about 1 MiB (gRPC's message,
protobuf's field, a positional read), freed a moment later. glibc's malloc serves blocks that
size with ``mmap`` or trims them off its heaps once freed, so the next chunk faults its pages
in again and the kernel zeroes them: on a download, page faults and page clearing took about
half of the server's CPU (``perf``). Raising the mmap and trim thresholds lets the allocator
reuse those blocks. Memory stays bounded by the chunks alive at once (a download's read-ahead,
an upload's pipeline), which are held anyway; only the give-back to the kernel is deferred.

Elsewhere than glibc (musl, macOS) there is no ``mallopt`` and nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MiB = 1 << 20


def keep_freed_buffers(mmap_threshold: int = 32 * MiB, trim_threshold: int = 128 * MiB) -> bool:
    """Blocks under ``mmap_threshold`` come from the heap, and a heap keeps up to
    ``trim_threshold`` free bytes at its top; returns whether glibc took both settings."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.debug("no mallopt in this C library: the allocator keeps its defaults")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # glibc caps M_MMAP_THRESHOLD at 32 MiB on 64-bit (HEAP_MAX_SIZE / 2)
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
