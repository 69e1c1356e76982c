"""The local terminal: raw mode (always restored), window size."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import termios
import tty
from collections.abc import Iterator


def is_terminal(fd: int) -> bool:
    return os.isatty(fd)


def window_size(fd: int) -> tuple[int, int]:
    """(columns, rows) of the terminal on fd, 80x24 if it cannot be read."""
    try:
        rows, columns, _, _ = struct.unpack(
            "HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return (80, 24)
    return (columns or 80, rows or 24)


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Raw mode for the duration; the saved settings come back on every exit path.

    Normal returns and exceptions are covered by `finally`; the signals that end distsvc
    are caught by the caller and turned into a normal return, so they pass here too.
    """
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        # SIGTTOU would stop us if we were moved to the background meanwhile.
        previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
        finally:
            signal.signal(signal.SIGTTOU, previous)
