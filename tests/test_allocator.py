"""The glibc mmap threshold that allocator.fix_mmap_threshold holds."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import allocator

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)

# Frees a 4 MiB mapped block, which lets glibc raise its threshold, then counts
# the mapped blocks while a 256 KiB buffer is alive.
PROBE = textwrap.dedent(
    """
    import ctypes
    import sys

    import allocator

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "fix":
        allocator.fix_mmap_threshold()
    large = bytearray(4 * 1024 * 1024)
    del large
    before = libc.mallinfo2().hblks
    buffer = bytearray(256 * 1024)
    print(libc.mallinfo2().hblks - before)
    """
)


def mapped_blocks_for_buffer(mode: str) -> int:
    env = {key: value for key, value in os.environ.items() if "MALLOC" not in key}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    return int(result.stdout)


def test_buffer_mapped_after_fix():
    assert mapped_blocks_for_buffer("fix") == 1


def test_buffer_from_heap_without_fix():
    assert mapped_blocks_for_buffer("default") == 0


def test_fix_leaves_environment_setting(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")

    assert allocator.fix_mmap_threshold() is False


def test_fix_reports_setting(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)

    assert allocator.fix_mmap_threshold() is True
