"""Relaying a remote command's streams, signals and window size to and from this process."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from collections.abc import Callable
from typing import Protocol

import distsvc.adapters.terminal

RELAYED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
STATUS_CONNECTION_LOST = -1


class Process(Protocol):
    def fileno(self) -> int: ...
    def read_stdout(self) -> bytes: ...
    def read_stderr(self) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    def close_stdin(self) -> None: ...
    def resize(self, columns: int, rows: int) -> None: ...
    def finished(self) -> bool: ...
    def exit_status(self) -> int: ...
    def connection_lost(self) -> bool: ...


class OutputClosed(Exception):
    """Our stdout or stderr was closed by the reader (e.g. `| head`)."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BrokenPipeError:
            raise OutputClosed from None
        view = view[written:]


def _pump_stdin(process: Process, fd: int) -> None:
    """Forward our stdin until end-of-file, then close the command's stdin (sends EOF)."""
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            process.write(data)
    except OSError:
        pass
    with contextlib.suppress(OSError, EOFError):
        process.close_stdin()


def relay(process: Process, stdin_fd: int | None, terminal_fd: int | None,
          deliver: Callable[[int], None]) -> int:
    """Relay until the command ends; its exit status, or STATUS_CONNECTION_LOST.

    `deliver(signum)` is called (in a thread) for SIGINT, SIGTERM, SIGHUP and SIGQUIT received
    here; with a terminal (`terminal_fd`), window size changes are passed on.
    """
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    previous_wakeup = signal.set_wakeup_fd(wake_w)
    watched = [*RELAYED_SIGNALS, signal.SIGWINCH]
    previous = {s: signal.signal(s, lambda *_: None) for s in watched}
    try:
        if stdin_fd is not None:
            threading.Thread(target=_pump_stdin, args=(process, stdin_fd), daemon=True,
                             name="stdin").start()
        else:
            process.close_stdin()
        while True:
            readable, _, _ = select.select([process.fileno(), wake_r], [], [], 1.0)
            if wake_r in readable:
                for signum in os.read(wake_r, 256):
                    if signum == signal.SIGWINCH:
                        if terminal_fd is not None:
                            process.resize(*distsvc.adapters.terminal.window_size(terminal_fd))
                    else:
                        threading.Thread(target=deliver, args=(signum,), daemon=True,
                                         name="signal").start()
            _write_all(1, process.read_stdout())
            _write_all(2, process.read_stderr())
            if process.finished():
                return process.exit_status()
            if process.connection_lost():
                _write_all(1, process.read_stdout())
                _write_all(2, process.read_stderr())
                return STATUS_CONNECTION_LOST
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(wake_r)
        os.close(wake_w)
