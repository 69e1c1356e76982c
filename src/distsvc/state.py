"""The shared host-load state file: what each host measured, and the jobs placed on each.

Written atomically (temporary file, fsync, rename) under an exclusive lock, so readers never
see a torn file. A corrupt or unreadable file is logged and rebuilt from scratch: it only
caches measurements, so losing it costs one probe round, never a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distsvc.log
import distsvc.probe

SCHEMA_VERSION = 1
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"

UP = "up"
UNKNOWN = "unknown"
REFUSED = "refused"  # its host key (or a jump host's) is unknown or changed: the user decides


@dataclasses.dataclass
class HostState:
    state: str = UNKNOWN
    measured_at: float | None = None
    access_ms: float | None = None
    measurement: distsvc.probe.Measurement | None = None
    error: str | None = None
    last_used: float | None = None


def refused(reason: str) -> HostState:
    """A host whose key was refused. It has no measurement time, so the next choice probes
    it again: once the user has accepted the key (or passes --accept-new), the very next
    command may use it, and until then each command says why it does not."""
    return HostState(state=REFUSED, error=reason)


@dataclasses.dataclass(frozen=True)
class Placement:
    """A job this user started on `host`, counted as load until measurements show it."""

    host: str
    pid: int
    started: str | None  # the process's start time, so a recycled PID is not mistaken for it
    placed_at: float


@dataclasses.dataclass
class State:
    hosts: dict[str, HostState] = dataclasses.field(default_factory=dict)
    placements: list[Placement] = dataclasses.field(default_factory=list)


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: with the PID, it names one process for its whole life."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            # The command name may contain spaces and parentheses: split after the last ')'.
            return stat.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


# A placement without a process (pid 0: a `best` query answered for a script) counts this long.
ANONYMOUS_PLACEMENT_TTL = 60.0


def placement_alive(placement: Placement, now: float | None = None) -> bool:
    if placement.pid == 0:
        return (now or time.time()) - placement.placed_at < ANONYMOUS_PLACEMENT_TTL
    try:
        os.kill(placement.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return placement.started is None or process_start_time(placement.pid) == placement.started


def _host_from_json(raw: dict[str, Any]) -> HostState:
    measurement = raw.get("measurement")
    return HostState(
        state=str(raw.get("state", UNKNOWN)),
        measured_at=raw.get("measured_at"),
        access_ms=raw.get("access_ms"),
        measurement=distsvc.probe.Measurement(**measurement) if measurement else None,
        error=raw.get("error"),
        last_used=raw.get("last_used"),
    )


def decode(text: str) -> State:
    """Parse the file's text; raises ValueError (or TypeError) on anything malformed."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("version") != SCHEMA_VERSION:
        raise ValueError(f"unsupported state schema {data.get('version')!r}")
    return State(
        hosts={str(name): _host_from_json(raw) for name, raw in data["hosts"].items()},
        placements=[Placement(**raw) for raw in data["placements"]],
    )


def encode(state: State) -> str:
    return json.dumps({
        "version": SCHEMA_VERSION,
        "hosts": {name: dataclasses.asdict(host) for name, host in sorted(state.hosts.items())},
        "placements": [dataclasses.asdict(p) for p in state.placements],
    }, indent=1)


def read(directory: Path) -> State:
    path = directory / STATE_FILE
    try:
        return decode(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return State()
    except OSError as error:
        distsvc.log.get().warning("state file unreadable, starting afresh", path=str(path),
                                  error=str(error))
        return State()
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        # ValueError covers bad JSON and bytes that are not UTF-8.
        distsvc.log.get().warning("state file corrupt, rebuilding it", path=str(path),
                                  error=str(error))
        return State()


def write(directory: Path, state: State) -> None:
    fd, temporary = tempfile.mkstemp(prefix=".state-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(encode(state))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, directory / STATE_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the state lock: read-modify-write cycles of concurrent clients do not interleave."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
