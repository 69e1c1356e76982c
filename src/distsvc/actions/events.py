"""Signals as events: caught from the first moment, queued, and a pipe that wakes a select().

The relay (relay.py), the daemon's client (client.py) and the daemon's `run` handler
(ClientEvents) share these. Light at import, since `distsvc-run CMD` loads it on its fast
path: signal's C half `_signal` instead of signal.py, whose three enums (and `import enum`)
cost ~4 ms of a command's ~25; the signal numbers are the same.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub in typeshed: the values are ints
import os

SIGINT: int = _signal.SIGINT
SIGTERM: int = _signal.SIGTERM
SIGHUP: int = _signal.SIGHUP
SIGQUIT: int = _signal.SIGQUIT
SIGWINCH: int = _signal.SIGWINCH
RELAYED_SIGNALS = (SIGINT, SIGTERM, SIGHUP, SIGQUIT)


class EventQueue:
    """Signal numbers waiting for the relay, and a pipe that wakes the relay's select().

    Events come from this process's own signals (SignalCatcher) or, in the daemon, from a
    client's messages (distsvc.daemon.handlers.ClientEvents). A list's append and pop are
    atomic, so a signal handler and other threads may add while the relay takes.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def add(self, signum: int) -> None:
        """Queue an event; safe in a signal handler and from other threads."""
        self.received.append(signum)
        try:
            os.write(self.wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the relay wakes anyway

    def fileno(self) -> int:
        """Readable after an event was queued."""
        return self.wake_r

    def take(self) -> list[int]:
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass
        taken = []
        while self.received:
            taken.append(self.received.pop(0))
        return taken

    def terminating(self) -> int | None:
        """A queued event that asks the command to end, if any (without consuming it)."""
        return next((s for s in self.received if s != SIGWINCH), None)

    def close_pipe(self) -> None:
        os.close(self.wake_r)
        os.close(self.wake_w)


class SignalCatcher(EventQueue):
    """Catches SIGINT, SIGTERM, SIGHUP, SIGQUIT and SIGWINCH while entered.

    Entered before anything is started on a host, so a signal that arrives at any moment is
    acted on (by not starting, or by delivery to the command) instead of tearing through
    paramiko's locks as a KeyboardInterrupt.
    """

    def __enter__(self) -> SignalCatcher:
        self.previous = {s: _signal.signal(s, lambda signum, _: self.add(signum))
                         for s in (*RELAYED_SIGNALS, SIGWINCH)}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            _signal.signal(signum, handler)
        self.close_pipe()
