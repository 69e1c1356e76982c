"""The local terminal: raw mode (always restored), window size.

Light at import, for the fast client (actions/client.py): termios and tty are loaded only
when a terminal is used, signal's C half (`_signal`) instead of signal.py and its enums.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub; see actions/events.py
import fcntl
import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def is_terminal(fd: int) -> bool:
    return os.isatty(fd)


def window_size(fd: int) -> tuple[int, int]:
    """(columns, rows) of the terminal on fd, 80x24 if it cannot be read."""
    import termios

    try:
        rows, columns, _, _ = struct.unpack(
            "HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return (80, 24)
    return (columns or 80, rows or 24)


class raw_mode:  # lower case: used as a function, `with raw_mode(fd):`
    """Raw mode for the duration; the saved settings come back on every exit path.

    Normal returns and exceptions are covered by __exit__; the signals that end distsvc
    are caught by the caller and turned into a normal return, so they pass here too.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list[Any] | None = None

    def __enter__(self) -> None:
        import termios
        import tty

        self.saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd, termios.TCSANOW)

    def __exit__(self, *exc: object) -> None:
        import termios

        if self.saved is None:
            return  # never entered (tcgetattr failed): nothing to restore
        # SIGTTOU would stop us if we were moved to the background meanwhile.
        previous = _signal.signal(_signal.SIGTTOU, _signal.SIG_IGN)
        try:
            termios.tcsetattr(self.fd, termios.TCSAFLUSH, self.saved)
        finally:
            _signal.signal(_signal.SIGTTOU, previous)
