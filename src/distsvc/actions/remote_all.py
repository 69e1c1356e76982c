"""Running one command on every host at once, output prefixed by host (distssh's runonall).

Each host's command writes into pipes of its own, whoever carries it: the daemon, which gets
them as the stdout and stderr of a `run` request pinned to that host (so its warm connections
are used), or a thread of this process running it as `distsvc-run` does without a daemon. The
main thread alone reads the pipes and writes our stdout and stderr, whole lines at a time,
each prefixed by `host: `: bytes stay bytes, and lines of different hosts never mix.

Signals are caught before anything starts. Once one arrives no further host is started, the
signal goes to every command that started (through its relay or its daemon connection), and
hosts still connecting are left behind at once instead of waited for: each checks for the
signal before it starts its command (placement.pin, run.execute, `_Run.started`), so none
starts after it. One host's failure is only that host's outcome.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import select
import signal
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import distsvc.actions.client
import distsvc.actions.relay
import distsvc.actions.run
import distsvc.config
import distsvc.errors
import distsvc.paths

if TYPE_CHECKING:  # importing it for real would load paramiko, which the daemon path skips
    import distsvc.adapters.ssh

UNREACHABLE = 255
DEFAULT_MAX_JOBS = 32  # hosts at once when -j is not given
MAX_JOBS = 64  # the most -j accepts: each host costs ~10 fds here and one daemon connection
MAX_LINE = 1 << 20  # a longer line is cut and goes on in a new prefixed line
READ_SIZE = 65536


@dataclasses.dataclass
class Outcome:
    host: str
    status: int
    error: str | None = None  # why it did not run or finish; None: it exited with `status`


@dataclasses.dataclass
class Result:
    outcomes: list[Outcome]
    interrupted: int | None  # the signal that stopped the run (SIGPIPE: our output closed)


class _Lines:
    """One stream of one host: bytes in, whole lines out, each prefixed by the host."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.pending = b""

    def feed(self, data: bytes) -> bytes:
        self.pending += data
        end = self.pending.rfind(b"\n") + 1
        lines = self.pending[:end].split(b"\n")[:-1]
        self.pending = self.pending[end:]
        while len(self.pending) > MAX_LINE:
            lines.append(self.pending[:MAX_LINE])
            self.pending = self.pending[MAX_LINE:]
        return b"".join(self.prefix + line + b"\n" for line in lines)

    def flush(self) -> bytes:
        """The last line, if it had no newline: it gets one, so the next host's line starts
        at the beginning of a line."""
        rest, self.pending = self.pending, b""
        return self.prefix + rest + b"\n" if rest else b""


WAITING, CONNECTING, RUNNING = "waiting", "connecting", "running"


class _Task:
    """One host's command: its pipes (read ends here, write ends the carrier's), its signal
    queue, and where it stands."""

    def __init__(self, host: distsvc.config.Host) -> None:
        self.host = host
        self.state = WAITING
        self.outcome: Outcome | None = None  # set by the worker when it is done
        self.events = distsvc.actions.relay.EventQueue()
        out_r, self.out_w = os.pipe2(os.O_CLOEXEC)
        err_r, self.err_w = os.pipe2(os.O_CLOEXEC)
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        prefix = f"{host.name}: ".encode()
        self.streams: dict[int, tuple[int, _Lines]] = {
            out_r: (1, _Lines(prefix)), err_r: (2, _Lines(prefix))}
        for fd in self.streams:
            os.set_blocking(fd, False)

    def close_carrier_fds(self) -> None:
        for fd in (self.out_w, self.err_w, self.devnull):
            os.close(fd)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Run:
    """What the main thread and the hosts' worker threads share."""

    def __init__(self, argv: Sequence[str], workdir: str, env: Mapping[str, str],
                 config: distsvc.config.Config, environ: Mapping[str, str],
                 quiet: bool) -> None:
        self.argv = list(argv)
        self.workdir = workdir
        self.env = dict(env)
        self.config = config
        self.environ = environ
        self.quiet = quiet
        self.options = distsvc.actions.run.Options(workdir=workdir, tty=False, stdin=False,
                                                   quiet=quiet)
        self.lock = threading.Lock()  # stopping and the tasks' states
        self.stopping: int | None = None
        self.output_lock = threading.Lock()  # our stdout and stderr, and output_closed
        self.output_closed = False
        self.fell_back = False
        self.pool: distsvc.adapters.ssh.Pool | None = None
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # Called from the hosts' threads.

    def started(self, task: _Task | None) -> None:
        """The host is connected and its command about to start (None: about to connect).
        Refused once a signal stopped the run: after it, nothing starts."""
        with self.lock:
            if self.stopping is not None:
                raise distsvc.errors.Interrupted(self.stopping)
            if task is not None:
                task.state = RUNNING

    def notice(self, message: str) -> None:
        if not self.quiet:
            self.emit(2, message.encode(errors="replace") + b"\n")

    def work(self, task: _Task) -> None:
        """The host's whole command, ending with its outcome (whatever happens)."""
        name = task.host.name
        try:
            outcome = Outcome(name, self._carry(task))
        except distsvc.errors.Interrupted as error:
            outcome = Outcome(name, error.exit_status, "not started: interrupted")
        except distsvc.errors.HostUnreachable as error:
            outcome = Outcome(name, UNREACHABLE, _one_line(error.reason))
        except distsvc.errors.DistsvcError as error:
            reason = error.message.removeprefix("distsvc: ").removeprefix(f"{name}: ")
            outcome = Outcome(name, error.exit_status, _one_line(reason))
        except Exception as error:  # one host's surprise must not hang the others' wait
            outcome = Outcome(name, UNREACHABLE, _one_line(f"{type(error).__name__}: {error}"))
        task.close_carrier_fds()
        task.outcome = outcome
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"\0")

    def _carry(self, task: _Task) -> int:
        fds = (task.devnull, task.out_w, task.err_w)
        name = task.host.name
        self.started(None)
        if distsvc.actions.client.enabled(self.environ):
            try:
                sock = distsvc.actions.client.connect(self.environ)
                try:
                    request = distsvc.actions.client.run_request(
                        self.argv, self.options, self.config, self.env, self.workdir, "xterm",
                        self.environ, host=name)
                    return distsvc.actions.client.carry(
                        sock, request, fds, task.events, False, self.notice,
                        started=lambda _: self.started(task))
                finally:
                    sock.close()
            except distsvc.actions.client.Unavailable as why:
                distsvc.actions.client.fall_back(self.environ, why)  # refuses if required
                self.fell_back = True
        return distsvc.actions.run.run_on_best(
            self.argv, self.options, self.config, self.env, self.workdir, "xterm",
            distsvc.paths.state_dir(self.environ), self._pool(), task.events, self.notice,
            fds=fds, started=lambda _: self.started(task), pinned=name)

    def _pool(self) -> distsvc.adapters.ssh.Pool:
        import distsvc.adapters.ssh

        with self.lock:
            if self.pool is None:
                self.pool = distsvc.adapters.ssh.Pool()
            return self.pool

    # Called from the main thread.

    def emit(self, fd: int, data: bytes) -> None:
        """Write to our stdout (1) or stderr (2); once either is closed (`| head`), nothing
        more is written and the main thread ends every command, as SIGPIPE would end us."""
        if not data:
            return
        with self.output_lock:
            if self.output_closed:
                return
            try:
                distsvc.actions.relay._write_all(fd, data)
            except distsvc.actions.relay.OutputClosed:
                self.output_closed = True

    def stop(self, signum: int, active: Sequence[_Task]) -> None:
        """No host starts from now on; the signal goes to every one that did or may."""
        with self.lock:
            if self.stopping is None:
                self.stopping = signum
        # The daemon passes on only the signals a terminal sends; SIGPIPE becomes SIGTERM.
        forwarded = signal.SIGTERM if signum == signal.SIGPIPE else signum
        for task in active:
            task.events.add(forwarded)


def _read(run: _Run, fd: int, task: _Task) -> bool:
    """Read what one pipe holds and write its whole lines; False at its end."""
    out_fd, lines = task.streams[fd]
    while True:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return True
        if not data:
            return False
        run.emit(out_fd, lines.feed(data))
        if len(data) < READ_SIZE:
            return True


def _finish(run: _Run, task: _Task, drain: bool) -> None:
    """Done with a task's pipes: what they still hold is written, then the last lines."""
    for fd, (out_fd, lines) in list(task.streams.items()):
        if drain:
            while _read(run, fd, task):
                try:  # the carrier is done: stop once the pipe is empty, even if still open
                    if not select.select([fd], [], [], 0)[0]:
                        break
                except OSError:
                    break
        run.emit(out_fd, lines.flush())
        os.close(fd)
    task.streams.clear()


def run_everywhere(argv: Sequence[str], workdir: str, env: Mapping[str, str],
                   config: distsvc.config.Config, environ: Mapping[str, str],
                   signals: distsvc.actions.relay.EventQueue, jobs: int | None = None,
                   quiet: bool = False) -> Result:
    """Run argv on every host, at most `jobs` at once (default: all, up to DEFAULT_MAX_JOBS).

    `signals` must be caught before this is called (the caller's SignalCatcher), so that a
    signal at any moment stops the run.
    """
    limit = jobs or min(len(config.hosts), DEFAULT_MAX_JOBS)
    run = _Run(argv, workdir, env, config, environ, quiet)
    waiting = collections.deque(config.hosts)
    active: list[_Task] = []
    outcomes: dict[str, Outcome] = {}
    try:
        while True:
            while waiting and len(active) < limit and run.stopping is None:
                task = _Task(waiting.popleft())
                task.state = CONNECTING
                active.append(task)
                threading.Thread(target=run.work, args=(task,), daemon=True,
                                 name=f"host-{task.host.name}").start()
            if not active:
                break
            watched = [signals.fileno(), run.wake_r, *(fd for t in active for fd in t.streams)]
            readable, _, _ = select.select(watched, [], [], 1.0)
            for signum in signals.take():
                if signum != signal.SIGWINCH:
                    run.stop(signum, active)
            if run.output_closed and run.stopping is None:
                run.stop(signal.SIGPIPE, active)
            with contextlib.suppress(BlockingIOError):
                os.read(run.wake_r, 4096)
            for task in list(active):
                for fd in [fd for fd in task.streams if fd in readable]:
                    if not _read(run, fd, task):
                        run.emit(task.streams[fd][0], task.streams[fd][1].flush())
                        os.close(fd)
                        del task.streams[fd]
                if task.outcome is not None:
                    _finish(run, task, drain=True)
                    task.events.close_pipe()
                    outcomes[task.host.name] = task.outcome
                    active.remove(task)
                elif run.stopping is not None and task.state == CONNECTING:
                    # Still connecting (a host that does not answer can take the whole
                    # connect timeout): left behind; it checks for the signal before starting.
                    _finish(run, task, drain=False)
                    outcomes[task.host.name] = Outcome(
                        task.host.name, 128 + run.stopping, "interrupted while connecting")
                    active.remove(task)
    finally:
        if run.pool is not None:
            run.pool.close_all()
    if run.fell_back:
        distsvc.actions.client.spawn(environ)  # for the next commands
    for host in waiting:  # left only when a signal stopped the run
        outcomes[host.name] = Outcome(host.name, 128 + (run.stopping or 0),
                                      "not started: interrupted")
    return Result([outcomes[h.name] for h in config.hosts], run.stopping)
