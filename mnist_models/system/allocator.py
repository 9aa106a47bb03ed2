"""The host allocator: keep freed memory in the process instead of handing it back to the kernel.

A CPU train step allocates tens of MB of activations and gradients and frees them again. glibc's
malloc serves blocks above its mmap threshold with fresh mmap()s and trims the heap's top back to
the kernel once more than its trim threshold is free; its dynamic thresholds can settle below what
one step frees, and then a step pages its buffers in again. How often depends on the process's
history: measured on a Zen 3 EPYC (2 cores, fast path, batch 100), simple-net steps faulted
6,500-7,900 pages (16-24 ms of kernel time) every step or every other step in some processes, 645
a step in one, none in another; kept, 0-100. Whole one-epoch runs were 1.07-1.56x faster kept.
The computation is untouched: only where the bytes come from changes.

So every process of this project (the CLI, the benchmark session, A/B workers, training in a Ray
worker) sets glibc's thresholds once: blocks up to 32 MiB (glibc's largest mmap threshold) come
from the heap, and the heap is trimmed only past 1 GiB free. `MNIST_BENCH_MALLOC=system` leaves
the C library's defaults alone, which is how the seed's own script runs (the process benchmark's
seed-pipeline side uses it). What was done is recorded in every record and report
(`machine_info()["allocator"]`). Elsewhere (macOS, Windows, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MODE_ENV = "MNIST_BENCH_MALLOC"
MODES = ("keep", "system")
M_TRIM_THRESHOLD = -1  # glibc's <malloc.h> parameter numbers
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 1024 * 1024 * 1024

_state: dict | None = None


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()  # musl has mallopt's name but not this
        return libc
    except (OSError, AttributeError):
        return None


def requested_mode() -> str:
    """keep (the default) or system, from MNIST_BENCH_MALLOC; anything else is refused."""
    from .errors import UsageError

    mode = os.environ.get(MODE_ENV, "keep").strip().lower() or "keep"
    if mode not in MODES:
        raise UsageError(f"{MODE_ENV}={mode!r} is not a mode; choose one of: {', '.join(MODES)}")
    return mode


def keep_freed_memory() -> dict:
    """Set the thresholds once per process (later calls return the first call's state)."""
    global _state
    if _state is not None:
        return _state
    mode = requested_mode()
    libc = _glibc()
    if libc is None:
        _state = {"malloc": "not glibc", "keeps_freed": False}
    elif mode == "system":
        _state = {"malloc": "glibc", "keeps_freed": False, "why": f"{MODE_ENV}=system"}
    else:
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        _state = {"malloc": "glibc", "keeps_freed": ok, "mmap_threshold": MMAP_THRESHOLD, "trim_threshold": TRIM_THRESHOLD}
        if not ok:
            _state["why"] = "mallopt refused the thresholds"
    return _state


def allocator_state() -> dict | None:
    """What this process's allocator does, for the records; None before keep_freed_memory ran."""
    return _state


def _mib(size: int) -> str:
    return f"{size >> 30} GiB" if size >= 1 << 30 else f"{size >> 20} MiB"


def describe(state: dict | None) -> str:
    """One line for a report's header."""
    if not state:
        return "not recorded"
    if state.get("keeps_freed"):
        return (
            f"{state['malloc']} malloc keeps freed memory (mmap threshold {_mib(state['mmap_threshold'])}, "
            f"trim threshold {_mib(state['trim_threshold'])}): a step reuses its memory instead of faulting it in"
        )
    return f"{state['malloc']} malloc's own defaults" + (f" ({state['why']})" if state.get("why") else "")
