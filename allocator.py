"""A setting of glibc's allocator that keeps a worker's resident size steady."""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt's parameter number for the mmap threshold, from glibc's <malloc.h>.
M_MMAP_THRESHOLD = -3
# glibc's own starting value: blocks of this size and larger get their own mapping.
MMAP_THRESHOLD_BYTES = 128 * 1024


def fix_mmap_threshold() -> bool:
    """Hold glibc's mmap threshold at 128 KiB, and return whether it was set.

    By default glibc raises the threshold, up to 32 MiB on 64-bit systems, each
    time a large mapped block is freed. Later large buffers, such as a feed's
    JSON text or an image being resized, then come from the heap, whose freed
    pages mostly stay resident. Setting the threshold turns that adjustment
    off, so each such buffer is returned to the system when freed. The
    MALLOC_MMAP_THRESHOLD_ variable, when set, is left to glibc. On other C
    libraries this does nothing.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
