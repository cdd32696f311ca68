"""Process-wide settings that make CPU inference fast: the allocator and the device."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


@functools.cache
def tune_allocator() -> bool:
    """Stop glibc's malloc from returning big buffers to the OS after every forward pass.

    With the defaults each large activation is mmap'ed and unmapped per forward pass, so every
    pass page-faults its memory back in (system time about equal to user time). Serving large
    blocks from the heap and never trimming it made batch-32 inference 2.1-2.8x faster on a 2-core
    machine (benchmarks/allocator.py) -- the gain of preloading tcmalloc, without preloading it.
    Returns False where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**30))


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else the CPU; otherwise the named torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def one_thread_for_tensors() -> None:
    """Make the calling thread run its tensor operations on itself alone (a thread pool's
    ``initializer`` for threads that prepare inputs beside the thread of the forward pass).

    With GNU OpenMP each thread that starts a parallel region gets a team of its own; once the
    process holds more OpenMP threads than cores, every team stops spinning between regions and
    sleeps instead, and a Lite0 forward pass on 2 cores took 18 ms instead of 9 (a server whose
    decoding threads normalised images with two threads each). One thread per helper keeps the
    forward pass's team the only one."""
    torch.set_num_threads(1)
