"""Running a command on this machine, with the same exit-status and signal rules as remote.

The command gets a process group of its own, made the terminal's foreground group when there
is a terminal, as a shell does for a job: Ctrl-C reaches the command directly, and SIGTERM or
SIGHUP sent to distsvc end the command's whole group.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import distsvc.errors
import distsvc.remote

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
GATE_CLOSED = 125  # a held child whose gate closed without the word to go on


def status_of(returncode: int) -> int:
    """A shell's view of a child's end: its exit status, or 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _terminal_fd() -> int | None:
    for fd in (0, 1, 2):
        if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
            return fd
    return None


def _give_terminal(fd: int, pgid: int) -> None:
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, pgid)
    finally:
        signal.signal(signal.SIGTTOU, previous)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _end_group(pgid: int, first: int | None) -> None:
    """What a signal left of the group gets SIGTERM, then SIGKILL, KILL_GRACE apart (`first`:
    the signal the group got already, not sent again)."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if signum == first:
            continue
        deadline = time.monotonic() + distsvc.remote.KILL_GRACE
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _group_alive(pgid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signum)


def _low_pipe() -> tuple[int, int]:
    """A pipe whose read end is a single digit: a POSIX shell redirects no other."""
    import fcntl

    read_end, write_end = os.pipe()
    if read_end > 9:
        low = fcntl.fcntl(read_end, fcntl.F_DUPFD, 3)
        os.close(read_end)
        read_end = low
        if low > 9:
            os.close(low)
            os.close(write_end)
            raise distsvc.errors.CannotRun("no free file descriptor below 10 for the scope's gate")
    return read_end, write_end


def _parent_death(signum: int) -> Callable[[], None]:
    """What a child runs before exec so that `signum` reaches it when we die (even of
    SIGKILL: prctl's PR_SET_PDEATHSIG), or at once if we died before it was set. libc is
    loaded here, in the parent: the child only calls it."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def set_it() -> None:
        prctl(1, signum, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os.kill(os.getpid(), signum)
    return set_it


def _pipes_out() -> list[int]:
    """Our stdout and stderr where they are pipes or sockets (a reader that can go)."""
    fds = []
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            mode = os.fstat(fd).st_mode
            if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                fds.append(fd)
    return fds


def _pidfd(pid: int) -> int | None:
    """A descriptor readable once `pid` has ended (pidfd_open(2), Linux 5.3); None without."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _ended(child: subprocess.Popen[bytes], pidfd: int | None, timeout: float) -> int | None:
    """The child's return code once it has ended, waiting at most `timeout` s; None if it
    runs on. With a pidfd the wait ends the moment the child does: Popen.wait(timeout) polls
    with sleeps of up to 50 ms, which a 35 ms `srun true` paid as 15 ms on average."""
    if pidfd is None:
        try:
            return child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.poll(timeout * 1000)  # a signal's EINTR is retried by Python after its handler
    return child.poll()


def reader_gone(fds: Sequence[int]) -> bool:
    """Whether the reader of one of `fds` (write ends) went: POLLERR, as a write's EPIPE."""
    if not fds:
        return False
    poller = select.poll()
    for fd in fds:
        poller.register(fd, 0)  # POLLERR and POLLHUP are reported unasked
    return any(events & select.POLLERR for _, events in poller.poll(0))


def run(argv: Sequence[str], cwd: str | None, env: dict[str, str],
        gate: Callable[[int], None] | None = None,
        parent_death_signal: int | None = None,
        forward: Callable[[int, int], int | None] | None = None,
        closed_output: Callable[[int], int | None] | None = None) -> int:
    """Run argv here and return its status (128+N if a signal ended it).

    A signal received is passed to the command's process group; whatever it leaves running
    (background jobs of a shell ignore SIGINT) is ended as on a remote host. With `gate`,
    the child waits before it execs argv until `gate(pid)` has returned (a transient scope
    is made around it there, so not one instruction of argv runs outside its limits); a
    gate that raises ends the child. With `parent_death_signal`, the child gets that signal
    when this process dies, however it dies (srun ends its job on SIGTERM). `forward(pgid,
    signum)` passes a received signal on instead of killpg, returning the signal it sent the
    group (None: none), which the escalation then skips; it runs in the wait loop, not in the
    signal handler (it may run a program). With `closed_output(pgid)`, the reader of our
    stdout or stderr going (a pipe to `head`) is the command's end, as SIGPIPE would be for a
    program writing there itself: `closed_output` ends it (srun survives a closed pipe) and
    returns the signal it sent the group, what is left is ended as for a signal, and the
    status is 141.
    """
    if cwd is not None and not os.path.isdir(cwd):
        raise distsvc.errors.CannotRun(f"{cwd}: no such directory")
    terminal = _terminal_fd()

    gate_r = gate_w = -1

    orphaned = _parent_death(parent_death_signal) if parent_death_signal else None

    def in_child() -> None:
        if orphaned is not None:
            orphaned()
        # Runs after setpgid: take the terminal before exec, so an early read cannot stop us.
        if terminal is not None:
            _give_terminal(terminal, os.getpgrp())

    if gate is not None:
        # Popen returns only once the child exec'd, so the wait is a shell's `read` before it
        # execs argv itself (same exit status and signals: exec replaces it).
        gate_r, gate_w = _low_pipe()
        # Without the word (we died, or the scope failed) it exits: CMD never runs unheld.
        argv = ["/bin/sh", "-c",
                f'read _ <&{gate_r} || exit {GATE_CLOSED}; exec {gate_r}<&-; exec "$@"', "sh",
                *argv]
    try:
        child = subprocess.Popen(list(argv), cwd=cwd, env=env, process_group=0,
                                 preexec_fn=in_child if terminal is not None or orphaned
                                 else None,
                                 pass_fds=(gate_r,) if gate is not None else ())
    except FileNotFoundError:  # worded as the remote wrapper words it (remote.lookup_check)
        why = "No such file or directory" if "/" in argv[0] else "command not found"
        print(f"distsvc: {argv[0]}: {why}", file=sys.stderr)
        return 127
    except PermissionError as error:
        print(f"distsvc: {argv[0]}: {error.strerror}", file=sys.stderr)
        return 126
    finally:
        if gate is not None:
            os.close(gate_r)
    if gate is not None:
        try:
            gate(child.pid)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            os.close(gate_w)
            child.wait()
            raise
        with contextlib.suppress(BrokenPipeError):  # a Ctrl-C ended it while held: its status
            os.write(gate_w, b"go\n")
        os.close(gate_w)
    if terminal is not None:
        _give_terminal(terminal, child.pid)
    pending: list[int] = []  # signals received, handed on by the wait loop
    received: list[int | None] = []  # what the group got for each signal handed on
    watched = _pipes_out() if closed_output is not None else []
    closed = False

    def to_group(pgid: int, signum: int) -> int | None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signum)
        return signum

    def on_signal(signum: int, _frame: object) -> None:
        pending.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in FORWARDED}
    pidfd = _pidfd(child.pid)
    try:
        while True:
            while pending:
                received.append((forward or to_group)(child.pid, pending.pop(0)))
            if closed_output is not None and not closed and reader_gone(watched):
                closed = True
                received.append(closed_output(child.pid))
            ended = _ended(child, pidfd, 0.05)
            if ended is not None:
                returncode = ended
                break
            if received:
                _end_group(child.pid, received[0])
        if received:
            _end_group(child.pid, received[0])
    finally:
        if pidfd is not None:
            os.close(pidfd)
        if terminal is not None:
            _give_terminal(terminal, os.getpgrp())
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 + signal.SIGPIPE if closed else status_of(returncode)
