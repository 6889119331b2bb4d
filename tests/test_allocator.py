"""raise_mmap_threshold: after it, a training-sized allocation comes from glibc's heap (reused memory) instead of a
fresh mapping whose pages fault in on every use (glibc's dynamic mmap threshold starts at 128 KB and rises only after
a large mapped block is freed, so without it the outcome depends on the process's history). Checked in fresh
interpreters that import nothing else: an 8 MB block is a mapping before priming and heap memory after."""

import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
if sys.argv[1] == "prime":
    from posttrain.allocator import raise_mmap_threshold
    assert raise_mmap_threshold()
before = libc.mallinfo2().hblkhd
block = libc.malloc(8 << 20)  # kept: a weight-sized tensor
print((libc.mallinfo2().hblkhd - before) >> 20)
"""


def _mapped_mb(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_primed_allocator_serves_training_sizes_from_the_heap():
    """An 8 MB allocation: 8 MB newly mapped in a fresh interpreter, none after raise_mmap_threshold()."""
    assert _mapped_mb("bare") >= 8  # the probe sees a mapping where glibc starts (threshold 128 KB)
    assert _mapped_mb("prime") == 0


def test_priming_can_be_turned_off(monkeypatch):
    import posttrain.allocator as allocator

    monkeypatch.setenv("POSTTRAIN_MALLOC_PRIME", "0")
    allocator.raise_mmap_threshold.cache_clear()
    try:
        assert allocator.raise_mmap_threshold() is False
    finally:
        allocator.raise_mmap_threshold.cache_clear()
