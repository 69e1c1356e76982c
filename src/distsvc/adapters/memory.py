"""Giving memory back to the system once a stream is over (glibc's malloc_trim)."""

from __future__ import annotations

import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes  # imported here: only a process that streamed much pays for it

        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
        return trim
    except (ImportError, OSError, AttributeError):  # no ctypes, or not glibc (musl)
        return None


def release_free_memory() -> None:
    """Return the free pages of every malloc arena to the kernel; a no-op without glibc.

    Relaying a stream allocates its packets and buffers (up to the SSH window and the relay's
    backlog) in the malloc arena of each thread that touches them, paramiko's transport thread
    and the relay's own. glibc gives freed memory back by itself only from the top of an
    arena and past a threshold that grows as large buffers are freed, so after a 1 GiB stream
    the daemon kept about 8 MiB it no longer used, for as long as it ran (measured: +7.7 MiB
    VmRSS, +0.4 MiB with this). A trim walks the arenas once, so it is done per large stream.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
