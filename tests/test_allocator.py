"""keep_freed_memory: large arrays come from memory the process already has."""
import subprocess
import sys
import textwrap

import pytest

from miniflow import cli
from miniflow.allocator import keep_freed_memory

# mallinfo2's hblks (blocks held as separate mmaps), in a fresh process: the
# setting is process-wide and cannot be undone, so the tests' own process keeps
# glibc's defaults.
PROBE = textwrap.dedent("""
    import ctypes, sys
    import numpy as np
    from miniflow.allocator import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    try:
        libc.mallinfo2.restype = MallInfo2
    except AttributeError:
        print("no mallinfo2"); sys.exit(0)
    applied = keep_freed_memory() if sys.argv[1] == "keep" else None
    before = libc.mallinfo2().hblks
    arrays = [np.ones(1 << 20, dtype=np.float32) for _ in range(3)]  # 4 MiB each
    print(applied, libc.mallinfo2().hblks - before)
""")


def _mmapped_blocks(mode):
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True,
                          text=True, check=True)
    if done.stdout.startswith("no mallinfo2"):
        pytest.skip("this C library has no mallinfo2 (not glibc >= 2.33)")
    applied, blocks = done.stdout.split()
    return applied, int(blocks)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_large_arrays_come_from_the_heap_once_applied():
    assert _mmapped_blocks("default") == ("None", 3)  # glibc's default: an mmap per array
    assert _mmapped_blocks("keep") == ("True", 0)


@pytest.mark.skipif(sys.platform.startswith("linux"), reason="where there is no glibc")
def test_elsewhere_it_changes_nothing_and_says_so():
    assert keep_freed_memory() is False


def test_the_command_applies_it_before_any_command_runs(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("applied"))
    # A command line that fails at once: the setting came first all the same.
    assert cli.main(["train", "--epochs", "none"]) == cli.EXIT_USAGE
    assert calls == ["applied"]
