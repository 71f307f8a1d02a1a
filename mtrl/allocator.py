"""Keep freed host memory in the process for reuse instead of handing it back to the system.

An MTSAC update on the CPU allocates and frees tens of megabytes of activations and gradients
(the per-task gradients alone are 44 MB on MT10). With glibc's default malloc, blocks above a
size threshold are mapped fresh at every allocation, and freed space at the top of the heap is
returned to the system, so every update faults its memory in again, page by page: about ten
thousand page faults, which cost a GradOPS update on MT10 about 15% of its time when first
measured (``docs/benchmarks.md``). Raising both
thresholds keeps those pages mapped. This is the effect that PyTorch's CPU performance guides get
by preloading jemalloc or tcmalloc, without a native dependency. CUDA memory is cached by torch
itself and is not concerned.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's largest accepted mmap threshold on 64-bit systems (HEAP_MAX_SIZE / 2); larger blocks
# are still mapped and unmapped one by one.
LARGEST_MMAP_THRESHOLD = 32 * 2**20
# Free space at the top of the heap is handed back only beyond this: the largest value mallopt
# takes (an int), 2 GiB.
TRIM_THRESHOLD = 2**31 - 1


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks for reuse; ``False`` where it is not glibc's.

    The setting holds for the whole process, and the process then keeps its peak memory until
    it exits, which is what a training process wants.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # The mmap threshold first: setting either one stops glibc from adapting the other.
    mapped = libc.mallopt(M_MMAP_THRESHOLD, LARGEST_MMAP_THRESHOLD)
    trimmed = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(mapped and trimmed)
