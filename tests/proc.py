"""What a process holds, read from /proc: open fds, threads, resident memory, children.

Leak tests compare these counts before and after a workload, never durations: a daemon that
keeps one fd per command it carried shows it in the fd count however fast the machine is.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path


def fd_count(pid: int) -> int:
    """Open file descriptors of `pid` (entries of /proc/PID/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int) -> list[str]:
    """What each open fd points at ("socket:[123]", "pipe:[456]", a path), for messages."""
    targets = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            pass  # closed meanwhile
    return sorted(targets)


def status_field(pid: int, name: str) -> str:
    """One field of /proc/PID/status, e.g. "Threads" or "VmRSS", as written there."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    raise KeyError(f"/proc/{pid}/status has no {name}")


def thread_count(pid: int) -> int:
    return int(status_field(pid, "Threads"))


def rss_kib(pid: int) -> int:
    """Resident set size in KiB (VmRSS)."""
    return int(status_field(pid, "VmRSS").split()[0])


def _parents() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            # The command name (field 2) is in parentheses and may hold spaces or ")".
            stat = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        children.setdefault(int(stat[1]), []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...): for the daemon, its
    ProxyCommand processes and anything else it started and did not reap."""
    children = _parents()
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return sorted(found)


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "(gone)"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or "(zombie)"


@dataclasses.dataclass(frozen=True)
class Figures:
    """One reading of a process."""

    fds: int
    threads: int
    rss_kib: int
    children: tuple[str, ...]  # "PID ARGS" of every descendant

    def __str__(self) -> str:
        return (f"{self.fds} fds, {self.threads} threads, {self.rss_kib / 1024:.1f} MiB RSS, "
                f"{len(self.children)} child processes")


def read(pid: int) -> Figures:
    children = tuple(f"{p} {command_line(p)}" for p in descendants(pid))
    return Figures(fd_count(pid), thread_count(pid), rss_kib(pid), children)


def settle(reading: Callable[[], int], at_most: int, timeout: float) -> int:
    """Wait (up to `timeout` s) until reading() is at most `at_most`; return the last value.

    Never raises on timeout: the caller asserts on the value, so a failure shows the figure.
    Things a command releases may go a moment after its client has its status (a thread
    finishing its `finally`, a connection closed by the idle check), hence the wait.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = reading()
        if value <= at_most or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def steady(reading: Callable[[], int], timeout: float, reads: int = 5,
           interval: float = 0.2) -> int:
    """Wait (up to `timeout` s) until reading() gives the same value `reads` times in a row,
    `interval` s apart; return the last value (a baseline taken at rest)."""
    deadline = time.monotonic() + timeout
    last, same = reading(), 1
    while same < reads and time.monotonic() < deadline:
        time.sleep(interval)
        value = reading()
        same = same + 1 if value == last else 1
        last = value
    return last
