"""Process-level allocator settings for training (Linux, glibc)."""

from __future__ import annotations

import functools
import os

MALLOC_PRIME_MB = 16
"""glibc's dynamic mmap threshold that training starts from (:func:`raise_mmap_threshold`)."""


@functools.cache
def raise_mmap_threshold() -> bool:
    """Start glibc's dynamic mmap threshold at :data:`MALLOC_PRIME_MB` (once per process): allocate and free one block
    of that size. glibc serves every allocation above the threshold (128 KB at start) with fresh pages from the kernel
    and returns them on free, and raises the threshold only when it frees a larger mapped block, so whether a process
    ever gets there depends on its allocation history. A training step allocates the same tensors over and over
    (under mixed precision, a bf16 copy of every weight at every forward); below the threshold they reuse heap memory,
    above it each one faults in its pages anew: 1.3x the speed of a small vision-language SFT step
    (``docs/performance.md``, "The allocator"). This is the state glibc reaches by itself after one large free.
    ``POSTTRAIN_MALLOC_PRIME=0`` leaves the allocator alone; a no-op off glibc. Returns whether it primed."""
    if os.environ.get("POSTTRAIN_MALLOC_PRIME", "1") == "0":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):  # not glibc
        return False
    block = libc.malloc(MALLOC_PRIME_MB << 20)
    if not block:
        return False
    libc.free(block)
    return True
