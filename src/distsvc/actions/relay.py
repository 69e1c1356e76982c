"""Relaying a remote command's streams, signals and window size to and from this process."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import Protocol

import distsvc.actions.events
import distsvc.adapters.memory
import distsvc.adapters.terminal
import distsvc.polling

# Defined in events.py, light enough for the fast client; named here too for the relay's users.
EventQueue = distsvc.actions.events.EventQueue
SignalCatcher = distsvc.actions.events.SignalCatcher
RELAYED_SIGNALS = distsvc.actions.events.RELAYED_SIGNALS
STATUS_CONNECTION_LOST = -1
ABANDON = 0  # event: signals cannot reach the command; close its session and stop relaying
# Output a command ended by a signal (Ctrl-C, a hang-up) left unread this long is dropped, as
# a local command's unwritten output dies with it.
END_DRAIN = 5.0
# A delivery ends every process of the command's tree it finds (the signal, then TERM and
# KILL), but finds nothing while the command is not there yet: the exec request was answered,
# and the host's shell or the wrapper has yet to start it (seconds on a loaded host). A command
# still running this long after a delivery ended is sent the signal again, at twice the
# interval each time (at most REDELIVER_MAX): a signal is never lost to a slow start.
REDELIVER_AFTER = 1.0
REDELIVER_MAX = 30.0


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
    def abandon(self) -> None: ...


class DirectOutput(Protocol):
    """Output the command's side writes to our descriptor itself while we hold none of ours
    (an SSH session's stdout: adapters/ssh/direct.py); what it cannot write, read_stdout()
    returns."""

    def resume(self) -> None: ...
    def close(self) -> int: ...


class OutputClosed(Exception):
    """Our stdout or stderr was closed by the reader (e.g. `| head`)."""


BACKLOG = 1 << 20  # output held for a stalled reader before the relay stops reading more
# After relaying this much output, the memory its buffers took is given back to the system
# (distsvc.adapters.memory): a daemon that carried one large stream stays as small as before.
RELEASE_AFTER = 16 << 20


def _backlogged(outputs: list[Output]) -> bool:
    """A reader of one of our outputs is BACKLOG behind: read no more from the command."""
    return any(len(output.pending) >= BACKLOG for output in outputs)


class Output:
    """One of the command's output streams, written without ever blocking the relay.

    A reader that stops reading (a paused pager, Ctrl-S on a terminal) must not stop the relay
    from handling signals and hang-ups. O_NONBLOCK cannot be set on the fd itself: the open file
    description is shared with the user's shell and every other holder. So pipes and terminals
    are reopened through /proc/self/fd (a new description to the same pipe or terminal, with
    O_NONBLOCK of its own), and sockets are written with MSG_DONTWAIT. Regular files (which do
    not stall, and whose offset must be shared) and anything that cannot be reopened take plain
    writes.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = bytearray()
        self.written = 0  # bytes the reader took
        self._own: int | None = None
        self._socket: socket.socket | None = None
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
                self._own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK
                                    | os.O_NOCTTY | os.O_CLOEXEC)
            elif stat.S_ISSOCK(mode):
                self._socket = socket.socket(fileno=os.dup(fd))
        except OSError:
            pass

    def fileno(self) -> int:
        return self._own if self._own is not None else self.fd

    def nonblocking(self) -> int | None:
        """A descriptor of our own to the reader, in non-blocking mode, if there is one."""
        return self._own

    def write(self, data: bytes, drop_past: int | None = None) -> None:
        """Queue `data` (beyond `drop_past` bytes pending, drop it) and write what the reader
        takes now. Raises OutputClosed."""
        if drop_past is None or len(self.pending) < drop_past:
            self.pending += data
        self.flush()

    def flush(self) -> None:
        while self.pending:
            try:
                if self._socket is not None:
                    written = self._socket.send(self.pending, socket.MSG_DONTWAIT)
                elif self._own is not None:
                    written = os.write(self._own, self.pending)
                else:
                    written = self._write_blocking()
            except (BlockingIOError, InterruptedError):
                return  # the reader is behind: the relay waits for it with select()
            except OSError as error:
                # EPIPE from `| head`, ENOSPC, EIO: a local matter that ends this command only.
                raise OutputClosed(str(error)) from None
            del self.pending[:written]
            self.written += written

    def _write_blocking(self) -> int:
        try:
            return os.write(self.fd, self.pending)
        except BlockingIOError:
            # Inherited in non-blocking mode (common under node or CI runners).
            distsvc.polling.wait(write=[self.fd])
            return 0

    def close(self) -> None:
        if self._own is not None:
            os.close(self._own)
        if self._socket is not None:
            self._socket.close()


class StdinPump:
    """Forwards a local fd to the command's stdin until end-of-file, then sends EOF.

    Polls instead of blocking in read(), and stop() waits for the thread: once a command is
    over nothing more is read, so a terminal or pipe shared with the user's shell keeps its
    next input for the shell, and an fd number the daemon closes and reuses is never read.
    With `reader_pid` (a daemon reading its client's terminal), input is read only while that
    process's group is the terminal's foreground group, as the kernel enforces with SIGTTIN
    for processes of the terminal's own session (the daemon is not one of them).
    """

    def __init__(self, process: Process, fd: int, reader_pid: int | None) -> None:
        self.process = process
        self.fd = fd
        self.reader_pid = reader_pid if os.isatty(fd) else None
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stopping = False
        self.thread = threading.Thread(target=self._pump, daemon=True, name="stdin")
        self.thread.start()

    def _may_read(self) -> bool:
        if self.reader_pid is None:
            return True
        # tcgetpgrp() works only on one's own controlling terminal; /proc tells about the
        # reader's: its process group (field 5) and its terminal's foreground group (field 8).
        try:
            with open(f"/proc/{self.reader_pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            return False
        return fields[2] == fields[5]

    def _pump(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN | select.POLLHUP)
        poller.register(self.wake_r, select.POLLIN)
        try:
            while not self.stopping:
                events = dict(poller.poll(1000))
                if self.stopping:
                    return
                if self.fd not in events:
                    continue
                if not self._may_read():
                    time.sleep(0.2)  # in the background: leave the input to the shell
                    continue
                data = os.read(self.fd, 65536)
                if not data:
                    break
                self.process.write(data)
        except (OSError, EOFError):
            pass
        with contextlib.suppress(OSError, EOFError):
            self.process.close_stdin()

    def stop(self) -> None:
        self.stopping = True
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"\0")
        self.thread.join()
        os.close(self.wake_r)
        os.close(self.wake_w)


_DEV_NULL = os.makedev(1, 3)  # /dev/null's device numbers on Linux


def _reads_nothing(fd: int) -> bool:
    """`fd` is /dev/null, whose every read is end-of-file: the command's stdin is closed at
    once, without a StdinPump thread (`cmd < /dev/null`, cron, CI: a thread and a pipe per
    command in a daemon serving many)."""
    try:
        info = os.fstat(fd)
    except OSError:
        return False
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == _DEV_NULL


def relay(process: Process, fds: tuple[int | None, int, int], terminal_fd: int | None,
          deliver: Callable[[int], None], events: EventQueue,
          reader_pid: int | None = None) -> int:
    """Relay until the command ends; its exit status, or STATUS_CONNECTION_LOST.

    `fds` are stdin (None: none), stdout and stderr. `deliver(signum)` is called (in a
    thread, joined before returning) for each SIGINT, SIGTERM, SIGHUP and SIGQUIT event, and
    again while the command runs on after a delivery ended (REDELIVER_AFTER); an
    ABANDON event (a signal that could not be delivered) closes the command's session; with
    a terminal (`terminal_fd`), a SIGWINCH event passes its new size on. `reader_pid`: see
    StdinPump. While a reader of our output is behind, no more output is read from the
    command (the SSH window then holds the command back) but events are still handled.
    A process that can write stdout to a pipe or terminal itself (`stdout_to`, a
    DirectOutput) does so while the relay has none of it waiting.
    """
    stdin_fd, stdout_fd, stderr_fd = fds
    pump = None
    direct: DirectOutput | None = None
    deliveries: list[threading.Thread] = []
    delivered: list[float] = []  # when each delivery ended (appended by its thread)
    redeliver_after = REDELIVER_AFTER
    outputs: list[Output] = []

    def delivering(signum: int) -> None:
        try:
            deliver(signum)
        finally:
            delivered.append(time.monotonic())

    def start_delivery(signum: int) -> None:
        deliveries.append(threading.Thread(
            target=delivering, args=(signum,), daemon=True, name="signal"))
        deliveries[-1].start()
    if stdin_fd is not None and not _reads_nothing(stdin_fd):
        pump = StdinPump(process, stdin_fd, reader_pid)
    else:
        process.close_stdin()
    try:
        outputs += [Output(stdout_fd), Output(stderr_fd)]
        out, err = outputs
        stdout_to = getattr(process, "stdout_to", None)
        if stdout_to is not None and out.nonblocking() is not None:
            direct = stdout_to(out.nonblocking())
        status: int | None = None
        asked_to_end_at: float | None = None
        asked_with: int | None = None  # the last signal delivered
        woken = True  # by an event (its pipe readable); else events.take() is left out
        while True:
            for signum in events.take() if woken or events.received else ():
                if signum == signal.SIGWINCH:
                    if terminal_fd is not None:
                        process.resize(*distsvc.adapters.terminal.window_size(terminal_fd))
                    continue
                if signum == ABANDON:
                    process.abandon()  # here, not in the delivering thread: select() uses its fd
                    return STATUS_CONNECTION_LOST
                if asked_to_end_at is None:
                    asked_to_end_at = time.monotonic()
                if status is None:
                    asked_with = signum
                    start_delivery(signum)
            if (status is None and asked_with is not None and len(delivered) == len(deliveries)
                    and time.monotonic() - delivered[-1] >= redeliver_after):
                start_delivery(asked_with)  # the last one found no command yet
                redeliver_after = min(redeliver_after * 2, REDELIVER_MAX)
            # Once the command is asked to end, its output is read on (its end arrives behind
            # it) and what a stalled reader cannot take is dropped, as it would die with a
            # local command.
            ending = asked_to_end_at is not None
            behind = not ending and _backlogged(outputs)
            if status is None and not behind:
                finished = process.finished()  # decided before the last reads: nothing lost
                out.write(process.read_stdout(), drop_past=BACKLOG if ending else None)
                err.write(process.read_stderr(), drop_past=BACKLOG if ending else None)
                if finished:
                    status = process.exit_status()
                elif process.connection_lost():
                    out.write(process.read_stdout())
                    err.write(process.read_stderr())
                    status = STATUS_CONNECTION_LOST
            else:
                out.flush()
                err.flush()
            if status is not None and not out.pending and not err.pending:
                return status
            if status is not None and asked_to_end_at is not None and (
                    time.monotonic() - asked_to_end_at > END_DRAIN):
                return status  # ended by a signal and nobody reads the rest: drop it
            # Decided again after the writes above: a flush that took the whole backlog leaves
            # nothing to wait for but the command's output. Left at its value from before, the
            # relay slept out select's timeout (1 s) with the SSH window spent and everyone
            # idle: a 200 MiB stream took 1.2 to 10 s, about one such second per 30 MiB.
            behind = not ending and _backlogged(outputs)
            if direct is not None and status is None and not out.pending:
                direct.resume()
            reading = [events.fileno()] + ([process.fileno()] if status is None and not behind
                                           else [])
            writing = [o.fileno() for o in outputs if o.pending]
            woken = events.fileno() in distsvc.polling.wait(reading, writing, 1.0)[0]
    finally:
        written = direct.close() if direct is not None else 0  # before its fd is closed
        for output in outputs:
            output.close()
        if pump is not None:
            pump.stop()
        for delivery in deliveries:
            delivery.join()
        if written + sum(output.written for output in outputs) >= RELEASE_AFTER:
            distsvc.adapters.memory.release_free_memory()
