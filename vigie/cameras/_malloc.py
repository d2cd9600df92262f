"""Giving a camera worker's freed memory back to the system (glibc; a no-op elsewhere).

A worker allocates and frees the same large buffers over and over: FFmpeg's probe buffers at
each connection, a decoded picture (about 350 kB at 640×360) and its decoder at each
analysis, the picture checks' temporary arrays. glibc raises its mmap threshold each time
such a block is freed, so from then on they come from the arenas of the camera threads, whose
freed space it seldom gives back. Measured with 100 cameras in one worker process:

- glibc as it is: RSS grows to 2.1 MB per camera;
- the mmap threshold pinned at 128 kB (mallopt): 1.1 MB, but 2 to 3 times the CPU: every
  large temporary becomes an mmap, page faults and a TLB shootdown across 100 threads;
- malloc_trim every few seconds: 1.2-1.3 MB, at no measurable CPU cost. This one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

__all__ = ["limit_arenas", "release_free_memory"]

_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h


def _glibc() -> Any | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 - glibc only (musl has none)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def release_free_memory() -> None:
    """Give the free pages of every arena back to the system (milliseconds)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def limit_arenas(count: int) -> None:
    """Let the threads created from now on share `count` arenas (MALLOC_ARENA_MAX).

    glibc gives a thread an arena of its own until there are eight per core: 16 on two
    cores, each holding freed FFmpeg and picture buffers that the other threads cannot reuse.
    Measured with 50 cameras per worker (and their keyframes decoded in one thread): 2
    arenas instead of 15, 140-145 MB of RSS per worker instead of 165-185, no more CPU.
    To be called before the camera threads start: glibc fixes its limit when it first needs
    more arenas than its default test allows (8), which a worker's imports never reach.
    """
    if _LIBC is not None:
        _LIBC.mallopt(_M_ARENA_MAX, count)
