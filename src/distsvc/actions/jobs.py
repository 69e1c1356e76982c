"""The client side of jobs: requests to the daemon, waiting, and reading a job's output.

Jobs live in the daemon (it owns their records and units), so every verb goes through it; a
daemon that is not running is started (socket activation does it when the socket unit is
enabled; else `client.spawn`). Waiting survives a daemon restart: a `job_wait` whose daemon
goes away (its connection closes, or its heartbeats stop) is asked again of the next one.
Output is read by this process from the files the daemon passes as fds, from byte 0 and to
the true end of each file.
"""

from __future__ import annotations

import _socket
import os
import select
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import distsvc.actions.client
import distsvc.adapters.unix
import distsvc.errors
import distsvc.protocol

START_WAIT = 10.0  # how long a spawned daemon gets to answer
RECONNECT_PAUSE = 0.2


def _needs_daemon(environ: Mapping[str, str]) -> None:
    if not distsvc.actions.client.enabled(environ):
        raise distsvc.errors.CannotRun(
            "jobs are kept by the daemon, and DISTSVC_DAEMON=off forbids it (unset it, or "
            "start it: systemctl --user start distsvc.socket)")


def connect(environ: Mapping[str, str]) -> _socket.socket:
    """A connection to the daemon, starting one if none answers."""
    _needs_daemon(environ)
    try:
        return distsvc.actions.client.connect(environ)
    except distsvc.actions.client.Unavailable as why:
        if distsvc.actions.client.required(environ):
            distsvc.actions.client.fall_back(environ, why)  # raises
        distsvc.actions.client.spawn(environ)
        deadline = time.monotonic() + START_WAIT
        while True:
            time.sleep(0.05)
            try:
                return distsvc.actions.client.connect(environ)
            except distsvc.actions.client.Unavailable as again:
                if time.monotonic() > deadline:
                    raise distsvc.errors.CannotRun(
                        f"no daemon answered ({again}), and none could be started (see "
                        "`distsvc status`)") from None


def _exchange(sock: _socket.socket, request: dict[str, Any],
              timeout: float) -> tuple[dict[str, Any], list[int]]:
    sock.settimeout(timeout)
    distsvc.adapters.unix.send(sock, {"client": distsvc.identity(), **request})
    reader = distsvc.adapters.unix.Reader(sock)
    try:
        message = reader.receive()
    except distsvc.protocol.ProtocolError as error:
        reader.close_fds()
        raise distsvc.errors.CannotRun(f"the daemon's answer was unreadable: {error}") from None
    fds, reader.fds = reader.fds, []
    try:
        answer = distsvc.actions.client.answer_or_raise(message)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return answer, fds


def _ask(message: dict[str, Any], environ: Mapping[str, str],
         timeout: float) -> tuple[dict[str, Any], list[int]]:
    """One request on a connection of its own: the answer and the fds passed with it."""
    sock = connect(environ)
    try:
        return _exchange(sock, message, timeout)
    except OSError as error:
        raise distsvc.errors.CannotRun(f"the daemon did not answer: {error}") from None
    finally:
        sock.close()


def request(message: dict[str, Any], environ: Mapping[str, str],
            timeout: float = 60.0) -> dict[str, Any]:
    """One request and its answer (an error answer raises, with the daemon's status)."""
    answer, fds = _ask(message, environ, timeout)
    for fd in fds:
        os.close(fd)
    return answer


def output_files(job_id: str, environ: Mapping[str, str], attempt: int | None = None
                 ) -> tuple[dict[str, Any], list[int]]:
    """The job's record and its stdout and stderr opened for reading: the current attempt's,
    or those kept of ended attempt `attempt`."""
    message: dict[str, Any] = {"type": "job_logs", "id": job_id}
    if attempt is not None:
        message["attempt"] = attempt
    answer, fds = _ask(message, environ, 60.0)
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        raise distsvc.errors.CannotRun("the daemon did not pass the job's output files")
    return answer["jobs"][0], fds


class Waiter:
    """Waits for jobs to end, across daemon restarts; `poll(timeout)` gives their records once
    they have all ended (with `any_ended`: once at least one has, the others maybe not
    final), else None. The same request is asked again of the next daemon after a restart."""

    def __init__(self, ids: Sequence[str], environ: Mapping[str, str],
                 any_ended: bool = False) -> None:
        self.ids = list(ids)
        self.any_ended = any_ended
        self.environ = environ
        self.sock: _socket.socket | None = None
        self.reader: distsvc.adapters.unix.Reader | None = None
        self.last_heard = time.monotonic()

    def _connect(self) -> None:
        self.sock = connect(self.environ)
        message: dict[str, Any] = {"client": distsvc.identity(), "type": "job_wait",
                                   "ids": self.ids}
        if self.any_ended:
            message["any"] = True
        distsvc.adapters.unix.send(self.sock, message)
        self.reader = distsvc.adapters.unix.Reader(self.sock)
        self.last_heard = time.monotonic()

    def _drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = self.reader = None

    def poll(self, timeout: float) -> list[dict[str, Any]] | None:
        deadline = time.monotonic() + timeout
        while True:
            if self.sock is None:
                self._connect()
            assert self.sock is not None and self.reader is not None
            remaining = max(0.0, deadline - time.monotonic())
            ready = self.reader.pending or select.select([self.sock], [], [], remaining)[0]
            if ready:
                try:
                    message = self.reader.receive()
                except (OSError, distsvc.protocol.ProtocolError):
                    message = None
                if message is None:  # the daemon went away (a restart?): ask the next one
                    self._drop()
                    time.sleep(RECONNECT_PAUSE)
                    continue
                self.last_heard = time.monotonic()
                if message.get("type") == "heartbeat":
                    continue
                answer = distsvc.actions.client.answer_or_raise(message)
                self._drop()
                jobs: list[dict[str, Any]] = answer["jobs"]
                return jobs
            if time.monotonic() - self.last_heard > distsvc.protocol.HEARTBEAT_SILENCE:
                self._drop()  # it hangs: a new connection reaches a daemon that answers
                continue
            if time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        self._drop()


def read_output(job_id: str, environ: Mapping[str, str], streams: Sequence[str],
                follow: bool, tail: int | None,
                write: Callable[[str, bytes], None],
                attempt: int | None = None) -> dict[str, Any]:
    """Write the job's output (`streams` of stdout, stderr) through `write`; with `follow`,
    live until the job has ended and every byte of its files is written. The job's record.
    `attempt`: an ended attempt's output instead of the current one's (complete: not to be
    followed)."""
    import distsvc.jobs.output

    job, fds = output_files(job_id, environ, attempt)
    waiter = Waiter([job_id], environ) if follow else None
    try:
        chosen = {name: fd for name, fd in zip(("stdout", "stderr"), fds, strict=True)
                  if name in streams}
        start = None if tail is None else {
            name: distsvc.jobs.output.tail_offset(fd, tail) for name, fd in chosen.items()}
        if waiter is None:
            distsvc.jobs.output.dump(chosen, write, start)
            return job
        final: list[dict[str, Any]] = []
        failed: list[distsvc.errors.DistsvcError] = []

        def ended(timeout: float) -> bool:
            assert waiter is not None
            if final or failed:
                return True
            try:
                jobs = waiter.poll(timeout)
            except distsvc.errors.DistsvcError as error:
                failed.append(error)  # e.g. removed meanwhile: what the files hold is shown
                return True
            if jobs is not None:
                final.extend(jobs)
            return bool(final)

        distsvc.jobs.output.follow(chosen, ended, write, start)
        if failed:
            raise failed[0]
        return final[0] if final else job
    finally:
        for fd in fds:
            os.close(fd)
        if waiter is not None:
            waiter.close()


def write_to_own_streams(name: str, data: bytes) -> None:
    """A job's stdout to our stdout, its stderr to our stderr."""
    stream = sys.stdout if name == "stdout" else sys.stderr
    stream.flush()
    fd = stream.fileno()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
