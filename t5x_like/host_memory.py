"""Keep freed host memory in the process, so XLA:CPU's step temporaries are not faulted in anew.

XLA:CPU gives each run of an executable one temporary buffer (319 MB for the tiny decoder's train
step, 3.2 GB for the 124M one) and frees it when the run ends. glibc's malloc serves every block
over 32 MB with a fresh `mmap` and hands it back with `munmap` on free, so each step the kernel
zeroes the whole buffer again, page by page: 80 thousand minor faults and ~0.2 s of system time
per tiny step (about a fifth of its CPU time), 800 thousand and ~3 s per 124M step. PyTorch pays
less of this: most of its per-op tensors are small enough to be reused inside malloc's heap.

`retain_freed_memory` tells glibc to keep such blocks: no `mmap` for large blocks, so they come
from the main heap; one arena, because a thread's own arena cannot hold a block over 64 MB and
would `mmap` it anyway (XLA's worker threads make these allocations); and never trimming the top
of the heap, so the next step reuses the same, already-mapped pages. What jemalloc or tcmalloc
would do through LD_PRELOAD, done in-process. The cost: memory freed by the process stays mapped
to it, and the heap grows, mostly over the first steps, until its free blocks settle into a
layout the buffers fit. It fragments: now and then a buffer finds no free block that fits,
although hundreds of MB are free, and lands on fresh pages (a step that faults again). The
README's default run peaks at 1.86 GB resident instead of 1.41 GB; the test's probe, 108 MB of
buffers per call, ended 80 calls with a 650-800 MB heap, mostly free (`mallinfo2`, in scratch
runs of the probe).

It must run before any thread but the main one allocates (the arena limit is fixed at the first
allocation of a second thread), so the `t5x-like` command calls it first thing (`cli.entry`, for
the commands that run steps) and so does `benchmarks/train_throughput.py`. Elsewhere (musl, macOS)
it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt(3) parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

DISABLE_ENV = "T5X_LIKE_SYSTEM_MALLOC"  # set to 1 to leave glibc's malloc as it is


def retain_freed_memory() -> bool:
    """Configure glibc's malloc to keep freed memory (see the module docstring).

    Returns whether it did: False when the C library is not glibc, or when the environment
    variable T5X_LIKE_SYSTEM_MALLOC=1 asks to leave malloc alone.
    """
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # mallopt takes an int: -1 becomes SIZE_MAX inside glibc, i.e. never trim.
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
    done = all(libc.mallopt(param, value) == 1 for param, value in settings)
    if not done:
        log.warning("glibc mallopt refused a setting; XLA:CPU temporaries will be re-faulted "
                    "each step")
    return done
