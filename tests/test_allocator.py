import platform
import subprocess
import sys

import pytest

# Six 8 MiB blocks alive at once, written, then all freed: glibc's defaults map blocks of this
# size afresh at each allocation and unmap them when freed, so every round faults all its pages
# in again. Plain malloc keeps
# torch's own allocation patterns (and their thread pools) out of the count.
ROUNDS = """
import ctypes, resource, sys
from mtrl.allocator import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
SIZE = 8 * 2**20
def round():
    blocks = [libc.malloc(SIZE) for _ in range(6)]
    for block in blocks:
        ctypes.memset(block, 1, SIZE)
    for block in blocks:
        libc.free(block)
for _ in range(3):
    round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    round()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True
    )
    return int(result.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_memory_is_reused_without_page_faults():
    assert page_faults("retain") < 100
    # 10 rounds of 48 MiB are 120 000 pages: by default each one faults again
    assert page_faults("default") > 100_000


@pytest.mark.skipif(platform.libc_ver()[0] == "glibc", reason="other C libraries only")
def test_other_c_libraries_are_left_alone():
    from mtrl.allocator import retain_freed_memory

    assert retain_freed_memory() is False
