"""Running a command on this machine, with the same exit-status and signal rules as remote.

The command gets a process group of its own, made the terminal's foreground group when there
is a terminal, as a shell does for a job: Ctrl-C reaches the command directly, and SIGTERM or
SIGHUP sent to distsvc end the command's whole group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


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


def run(argv: Sequence[str], cwd: str | None, env: dict[str, str]) -> int:
    """Run argv here and return its status (128+N if a signal ended it)."""
    terminal = _terminal_fd()

    def in_child() -> None:
        # Runs after setpgid: take the terminal before exec, so an early read cannot stop us.
        if terminal is not None:
            _give_terminal(terminal, os.getpgrp())

    try:
        child = subprocess.Popen(list(argv), cwd=cwd, env=env, process_group=0,
                                 preexec_fn=in_child if terminal is not None else None)
    except FileNotFoundError:
        print(f"distsvc: {argv[0]}: command not found", file=sys.stderr)
        return 127
    except PermissionError as error:
        print(f"distsvc: {argv[0]}: {error.strerror}", file=sys.stderr)
        return 126
    if terminal is not None:
        _give_terminal(terminal, child.pid)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        while True:
            try:
                returncode = child.wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
    finally:
        if terminal is not None:
            _give_terminal(terminal, os.getpgrp())
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status_of(returncode)
