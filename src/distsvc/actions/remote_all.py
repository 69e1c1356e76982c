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

With `capture` (`run --all --json`), each host's output is kept in its outcome instead, its
first `capture` bytes of each stream as they came (the rest counted), for a caller that
prints every host's output and status together.
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
    stdout: bytes = b""  # with `capture`: what it wrote, at most that many bytes of each
    stderr: bytes = b""
    stdout_cut: int = 0  # bytes left out past the `capture` bound
    stderr_cut: int = 0


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


class _Screen:
    """Our stdout (1) and stderr (2), written by the main thread alone and never blocking it:
    while a reader is behind (a paused pager), the hosts' output waits in their pipes, and
    signals are still acted on at once. Once either is closed (`| head`), nothing more is
    written and every command is ended, as SIGPIPE would end us. After a signal, what comes
    while the reader is behind is dropped (the commands are ending; nobody waits for it)."""

    def __init__(self) -> None:
        self.outputs = {1: distsvc.actions.relay.Output(1),
                        2: distsvc.actions.relay.Output(2)}
        self.closed = False
        self.stopped = False

    def write(self, fd: int, data: bytes) -> None:
        if data and not self.closed:
            try:
                self.outputs[fd].write(
                    data, drop_past=distsvc.actions.relay.BACKLOG if self.stopped else None)
            except distsvc.actions.relay.OutputClosed:
                self.closed = True

    def flush(self) -> None:
        for output in self.outputs.values():
            if not self.closed:
                try:
                    output.flush()
                except distsvc.actions.relay.OutputClosed:
                    self.closed = True

    def behind(self) -> bool:
        return any(len(o.pending) >= distsvc.actions.relay.BACKLOG
                   for o in self.outputs.values())

    def waiting(self) -> list[int]:
        """The fds a reader has yet to take our output from."""
        return [] if self.closed else [o.fileno() for o in self.outputs.values() if o.pending]

    def close(self) -> None:
        for output in self.outputs.values():
            output.close()


WAITING, CONNECTING, RUNNING = "waiting", "connecting", "running"


class _Task:
    """One host's command: its pipes (read ends here, write ends the carrier's), its signal
    queue, and where it stands."""

    def __init__(self, host: distsvc.config.Host, capture: int | None = None) -> None:
        self.host = host
        self.capture = capture
        self.kept = {1: bytearray(), 2: bytearray()}
        self.cut = {1: 0, 2: 0}
        self.state = CONNECTING
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

    def read(self, fd: int, screen: _Screen) -> bool:
        """Write the whole lines one pipe holds now; False at its end (then closed)."""
        out_fd, lines = self.streams[fd]
        while True:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return True
            if not data:
                self._put(screen, out_fd, lines.flush())
                os.close(fd)
                del self.streams[fd]
                return False
            if self.capture is None:
                screen.write(out_fd, lines.feed(data))
            else:
                self._keep(out_fd, data)
            if len(data) < READ_SIZE:
                return True

    def finish(self, screen: _Screen, drain: bool) -> None:
        """Done with the pipes: (with `drain`) what they hold is written, then the last lines.
        The carrier is done: what is in the pipe is all, even if the daemon still holds it."""
        for fd in list(self.streams):
            while drain and fd in self.streams and select.select([fd], [], [], 0)[0]:
                self.read(fd, screen)
            if fd in self.streams:
                out_fd, lines = self.streams.pop(fd)
                self._put(screen, out_fd, lines.flush())
                os.close(fd)

    def _put(self, screen: _Screen, fd: int, data: bytes) -> None:
        """Prefixed lines to the screen, unless capturing (then `_Lines` got nothing)."""
        if self.capture is None:
            screen.write(fd, data)

    def _keep(self, fd: int, data: bytes) -> None:
        kept = self.kept[fd]
        room = max(0, (self.capture or 0) - len(kept))
        kept += data[:room]
        self.cut[fd] += max(0, len(data) - room)

    def with_output(self, outcome: Outcome) -> Outcome:
        """The outcome with what was captured of the host's output."""
        return dataclasses.replace(outcome, stdout=bytes(self.kept[1]),
                                   stderr=bytes(self.kept[2]), stdout_cut=self.cut[1],
                                   stderr_cut=self.cut[2])


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
        self.notices: collections.deque[bytes] = collections.deque()  # for the main thread
        self.fell_back = False
        self.pool: distsvc.adapters.ssh.Pool | None = None
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # Called from the hosts' threads.

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"\0")

    def started(self, task: _Task | None) -> None:
        """The host is connected and its command about to start (None: about to connect).
        Refused once a signal stopped the run: after it, nothing starts."""
        with self.lock:
            if self.stopping is not None:
                raise distsvc.errors.Interrupted(self.stopping)
            if task is not None:
                task.state = RUNNING

    def notice(self, message: str) -> None:
        """A line for stderr; the user must hear it (a signal that could not be delivered)."""
        self.notices.append(message.encode(errors="replace") + b"\n")
        self._wake()

    def say(self, message: str) -> None:
        """A line for stderr that --quiet silences."""
        if not self.quiet:
            self.notice(message)

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
        self._wake()

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
                        sock, request, fds, task.events, False, self.notice,  # quiet: theirs
                        started=lambda _: self.started(task))
                finally:
                    sock.close()
            except distsvc.actions.client.Unavailable as why:
                distsvc.actions.client.fall_back(self.environ, why)  # refuses if required
                self.fell_back = True
        return distsvc.actions.run.run_on_best(
            self.argv, self.options, self.config, self.env, self.workdir, "xterm",
            distsvc.paths.state_dir(self.environ), self._pool(), task.events, self.say,
            fds=fds, started=lambda _: self.started(task), warn=self.notice, pinned=name)

    def _pool(self) -> distsvc.adapters.ssh.Pool:
        import distsvc.adapters.ssh

        with self.lock:
            if self.pool is None:
                self.pool = distsvc.adapters.ssh.Pool()
            return self.pool

    # Called from the main thread.

    def stop(self, signum: int, active: Sequence[_Task]) -> None:
        """No host starts from now on; the signal goes to every one that did or may."""
        with self.lock:
            if self.stopping is None:
                self.stopping = signum
        # The daemon passes on only the signals a terminal sends; SIGPIPE becomes SIGTERM.
        forwarded = signal.SIGTERM if signum == signal.SIGPIPE else signum
        for task in active:
            task.events.add(forwarded)


def run_everywhere(argv: Sequence[str], workdir: str, env: Mapping[str, str],
                   config: distsvc.config.Config, environ: Mapping[str, str],
                   signals: distsvc.actions.relay.EventQueue, jobs: int | None = None,
                   quiet: bool = False, capture: int | None = None) -> Result:
    """Run argv on every host, at most `jobs` at once (default: all, up to DEFAULT_MAX_JOBS);
    with `capture`, each host's output in its outcome (at most that many bytes per stream).

    `signals` must be caught before this is called (the caller's SignalCatcher), so that a
    signal at any moment stops the run.
    """
    limit = jobs or min(len(config.hosts), DEFAULT_MAX_JOBS)
    run = _Run(argv, workdir, env, config, environ, quiet)
    screen = _Screen()
    waiting = collections.deque(config.hosts)
    active: list[_Task] = []
    outcomes: dict[str, Outcome] = {}
    try:
        while True:
            while waiting and len(active) < limit and run.stopping is None:
                task = _Task(waiting.popleft(), capture)
                active.append(task)
                threading.Thread(target=run.work, args=(task,), daemon=True,
                                 name=f"host-{task.host.name}").start()
            if not active and (not screen.waiting() or run.stopping is not None):
                break
            reading = [signals.fileno(), run.wake_r]
            # Once stopped, the hosts' pipes are read even while our reader is behind: their
            # relays end only when their output is taken (the screen drops it meanwhile).
            screen.stopped = run.stopping is not None
            if not screen.behind() or screen.stopped:
                reading += [fd for t in active for fd in t.streams]
            readable, _, _ = select.select(reading, screen.waiting(), [], 1.0)
            for signum in signals.take():
                if signum != signal.SIGWINCH:
                    run.stop(signum, active)
            with contextlib.suppress(BlockingIOError):
                os.read(run.wake_r, 4096)
            while run.notices:
                screen.write(2, run.notices.popleft())
            screen.flush()
            for task in list(active):
                for fd in [fd for fd in task.streams if fd in readable]:
                    task.read(fd, screen)
                if task.outcome is not None:
                    task.finish(screen, drain=True)
                    task.events.close_pipe()
                    outcomes[task.host.name] = task.with_output(task.outcome)
                    active.remove(task)
                elif run.stopping is not None and task.state == CONNECTING:
                    # Still connecting (a host that does not answer can take the whole
                    # connect timeout): left behind; it checks for the signal before starting.
                    task.finish(screen, drain=False)
                    outcomes[task.host.name] = task.with_output(Outcome(
                        task.host.name, 128 + run.stopping, "interrupted while connecting"))
                    active.remove(task)
            if screen.closed and run.stopping is None:
                run.stop(signal.SIGPIPE, active)
    finally:
        screen.close()
        if run.pool is not None:
            run.pool.close_all()
    if run.fell_back:
        distsvc.actions.client.spawn(environ)  # for the next commands
    for host in waiting:  # left only when a signal stopped the run
        outcomes[host.name] = Outcome(host.name, 128 + (run.stopping or 0),
                                      "not started: interrupted")
    return Result([outcomes[h.name] for h in config.hosts], run.stopping)
