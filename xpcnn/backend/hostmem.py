"""Keep freed host memory in the process, so a CPU training step does not fault it back in.

A training step on NumPy allocates and frees tens of megabytes of temporaries (the im2col
matrices alone are ~10 MB at batch 128). glibc's malloc hands blocks that large back to the
kernel when they are freed — by ``munmap``, or by trimming the top of the heap — and the next
step takes them back page by page, each page faulted in and zeroed by the kernel. With the
thresholds below the arithmetic is the same and only the page faults go (the gain is measured
in BENCHMARKS.md).

:func:`keep_freed_host_memory` sets two of glibc's documented ``mallopt`` thresholds (the same
ones the ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables set):
blocks up to 32 MiB come from the heap, and up to 1 GiB of free heap is kept for reuse instead
of being returned. Peak memory does not grow (the peak is reached inside a step either way);
memory freed after training stays with the process until it exits. ``Sequential.fit`` calls it
on the CPU backend; ``XPCNN_KEEP_HOST_MEMORY=0`` (or either ``MALLOC_*`` variable, or a
``glibc.malloc.*`` entry in ``GLIBC_TUNABLES``, set by the user) leaves malloc as it is.
Elsewhere than glibc (macOS, Windows, musl) it does nothing.

Examples
--------
>>> from xpcnn.backend.hostmem import keep_freed_host_memory
>>> keep_freed_host_memory() in (True, False)
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 2**30

_done: bool | None = None


def keep_freed_host_memory() -> bool:
    """Tune glibc malloc once per process (see the module docstring); True when it is tuned."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("XPCNN_KEEP_HOST_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return _done
    if ("MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ
            or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")):
        return _done  # the user chose; glibc has read their values at start-up
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return _done
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # Both thresholds at once: setting either one alone stops glibc's own adjustment of the other.
    _done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _done
