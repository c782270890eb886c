"""Keep freed array memory in the process for the next step (glibc's allocator).

glibc hands out every block above its mmap threshold (128 KiB to start with) as a
fresh ``mmap``, and gives it back to the system when it is freed. A training step
allocates and frees the same large arrays (activations, convolution columns,
gradients) thousands of times, and each new mmap is faulted in one 4 KiB page at
a time: the CNN's first epoch ran 31 ms a step instead of 21 ms, until glibc
raised its threshold by itself (it does so after freeing a block larger than the
threshold, which may happen late or never).

:func:`keep_freed_memory` fixes the threshold at 32 MiB (glibc's largest on 64-bit)
and keeps up to 1 GiB of freed memory in the process: after the first steps, the
arrays of every step come from memory already mapped. The peak memory is that of
the arrays alive at once, as before; what changes is that freed memory is
reused rather than returned and mapped again. The ``miniflow`` command applies it;
a program training in its own loop may call it once at the start. It changes the
whole process, and cannot be undone, so the library's functions never call it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "M_MMAP_THRESHOLD",
           "M_TRIM_THRESHOLD"]

#: Blocks up to this size come from the heap (glibc's maximum on 64-bit: 4 MiB * 8).
MMAP_THRESHOLD = 32 << 20
#: Freed memory kept for reuse before glibc returns the top of the heap to the system.
TRIM_THRESHOLD = 1 << 30

#: mallopt's parameter numbers (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Tune glibc's allocator to reuse freed memory (see the module's docstring).

    Returns True where it was applied; False where the C library is not glibc
    (macOS, Windows, musl), which is left as it is: only the speed differs.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the mmap threshold first: setting it also stops
    # glibc from moving either threshold by itself.
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 \
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
