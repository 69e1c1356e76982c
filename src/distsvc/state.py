"""The shared host-load state file: what each host measured, and the jobs placed on each.

Written atomically (temporary file, fsync, rename) under an exclusive lock, so readers never
see a torn file. A corrupt or unreadable file is logged and rebuilt from scratch: it only
caches measurements, so losing it costs one probe round, never a failure.

Code that reads or changes the state asks `store(directory)` for it: the file itself
(`FileStore`, every look and change under the lock), or, in a daemon serving that
directory, the daemon's copy in memory (daemon/hoststate.py), which writes the file behind
and picks up what other processes wrote. Either way a change is a three-way `merge` away
from what another process wrote meanwhile, never a stale copy written over it.
"""

from __future__ import annotations

import _json
import contextlib
import dataclasses
import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import distsvc.log
import distsvc.probe

SCHEMA_VERSION = 1
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"

UP = "up"
UNKNOWN = "unknown"
REFUSED = "refused"  # its host key (or a jump host's) is unknown or changed: the user decides


@dataclasses.dataclass(frozen=True)
class HostState:
    """What one host measured. Frozen: a State's copy shares these with the original (see
    State.copy), so a change is a new one (dataclasses.replace), never an edit in place."""

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

    def copy(self) -> State:
        """A copy to change freely: new containers around the same (immutable) entries, so
        it costs one dict and one list, not a copy of every host."""
        return State(dict(self.hosts), list(self.placements))


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: with the PID, it names one process for its whole life.
    (Read with os.open and os.read: a text file object cost 3x the reading.)"""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        # The command name may contain spaces and parentheses: split after the last ')'.
        return data.rpartition(b")")[2].split()[19].decode("ascii")
    except (OSError, IndexError, UnicodeDecodeError):
        return None


# A placement without a process (pid 0: a `best` query answered for a script) counts this long.
ANONYMOUS_PLACEMENT_TTL = 60.0


# A job's process seen alive (its PID and start time) is taken as the same process for this
# long while its PID exists (kill 0, each look): every choice prunes every placement, and
# reading /proc/PID/stat for each made a burst quadratic (100 commands at once: ~10 ms of the
# daemon's CPU per command). Missed meanwhile: only a PID reused within that second.
SEEN_ALIVE_FOR = 1.0
_seen_alive: dict[tuple[int, str], float] = {}  # (pid, start time) -> time.monotonic()
SEEN_ALIVE_MAX = 4096  # more are forgotten at once


def placement_alive(placement: Placement, now: float | None = None) -> bool:
    if placement.pid == 0:
        return (now if now is not None else time.time()) - placement.placed_at < \
            ANONYMOUS_PLACEMENT_TTL
    try:
        os.kill(placement.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if placement.started is None:
        return True
    key = (placement.pid, placement.started)
    looked = time.monotonic()
    if looked - _seen_alive.get(key, -SEEN_ALIVE_FOR) < SEEN_ALIVE_FOR:
        return True
    if process_start_time(placement.pid) != placement.started:
        return False
    if len(_seen_alive) >= SEEN_ALIVE_MAX:
        _seen_alive.clear()
    _seen_alive[key] = looked
    return True


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


def _host_to_json(host: HostState) -> dict[str, Any]:
    m = host.measurement
    return {"state": host.state, "measured_at": host.measured_at, "access_ms": host.access_ms,
            "measurement": None if m is None else m.__dict__.copy(), "error": host.error,
            "last_used": host.last_used}


def _unserializable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# json.dumps(value)'s very output, from json's C encoder made once: json.dumps makes one per
# call, which was half of a write's CPU (the daemon writes every 50 ms under a burst).
_encode_json = _json.make_encoder({}, _unserializable, _json.encode_basestring_ascii, None,
                                  ": ", ", ", False, False, True)


def _dumps(value: object) -> str:
    return "".join(_encode_json(value, 0))


def encode(state: State) -> str:
    # Field by field and one entry a line (not dataclasses.asdict and indent=, which take
    # the pure-Python encoder: 14 ms for 4 hosts and 256 placements, against 1 ms).
    hosts = ",\n".join(f"  {_dumps(name)}: {_dumps(_host_to_json(host))}"
                       for name, host in sorted(state.hosts.items()))
    placements = ",\n".join(f"  {_dumps(p.__dict__)}" for p in state.placements)
    return (f'{{"version": {SCHEMA_VERSION},\n "hosts": {{\n{hosts}\n }},\n'
            f' "placements": [\n{placements}\n ]}}\n')


# Which version of the file a process read or wrote: its inode, size and modification time.
# Every write is a new file renamed into place, so a new inode tells a change by a stat.
Signature = tuple[int, int, int]


def _signature(st: os.stat_result) -> Signature:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def signature_of(fd: int) -> Signature:
    """signature() of the file open as `fd`."""
    return _signature(os.fstat(fd))


def signature(directory: Path) -> Signature | None:
    """The file's signature now (one stat), None when there is none."""
    return file_signature(directory / STATE_FILE)


def file_signature(path: Path | str) -> Signature | None:
    """signature() of the state file at `path`: a caller that looks often keeps the path
    (joining a pathlib path costs as much as the stat)."""
    try:
        return _signature(os.stat(path))
    except OSError:
        return None


def read_signed(directory: Path) -> tuple[State, Signature | None]:
    """The state and the signature of the very file it was read from. No lock needed: a
    write replaces the file whole, so a reader gets one version or the next."""
    path = directory / STATE_FILE
    try:
        with open(path, "rb") as file:
            seen = _signature(os.fstat(file.fileno()))
            data = file.read()
    except FileNotFoundError:
        return State(), None
    except OSError as error:
        distsvc.log.get().warning("state file unreadable, starting afresh", path=str(path),
                                  error=str(error))
        return State(), None
    try:
        return decode(data.decode("utf-8")), seen
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        # ValueError covers bad JSON and bytes that are not UTF-8.
        distsvc.log.get().warning("state file corrupt, rebuilding it", path=str(path),
                                  error=str(error))
        return State(), seen


def read(directory: Path) -> State:
    return read_signed(directory)[0]


def write(directory: Path, state: State) -> Signature:
    """Replace the file atomically (under the lock); the signature of what was written."""
    written, held = write_held(directory, state)
    os.close(held)
    return written


def write_held(directory: Path, state: State) -> tuple[Signature, int]:
    """write(), and a descriptor open on the very file written (the caller closes it): held,
    its inode number cannot be given to a later version (see daemon/hoststate.py)."""
    fd, temporary = tempfile.mkstemp(prefix=".state-", dir=directory)
    held = -1
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(encode(state))
            out.flush()
            os.fsync(out.fileno())
            written = _signature(os.fstat(out.fileno()))
            held = os.open(temporary, os.O_RDONLY | os.O_CLOEXEC)
        os.replace(temporary, directory / STATE_FILE)
    except BaseException:
        if held >= 0:
            os.close(held)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        os.close(held)
        raise
    return written, held


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


def _merge_host(base: HostState | None, ours: HostState | None, theirs: HostState | None
                ) -> HostState | None:
    if ours is base or ours == base:
        return theirs  # we did not change it: theirs, changed or not
    if theirs is base or theirs == base or theirs is None or ours is None:
        return ours
    # Both measured it meanwhile: the newer measurement, and the later use of either.
    newer = ours if (ours.measured_at or 0.0) >= (theirs.measured_at or 0.0) else theirs
    used = max((t for t in (ours.last_used, theirs.last_used) if t is not None), default=None)
    return newer if newer.last_used == used else dataclasses.replace(newer, last_used=used)


def merge(base: State, ours: State, theirs: State) -> State:
    """What `ours` changed since `base`, applied to `theirs` (another process's writes since
    `base`), so neither side's changes are lost: a host one side changed takes that side's
    entry (both: the newer measurement); a placement either side removed stays removed, and
    one either side added is kept. Pure, and idempotent: merging what is already in
    `theirs` changes nothing."""
    hosts: dict[str, HostState] = {}
    for name in theirs.hosts.keys() | ours.hosts.keys():
        merged = _merge_host(base.hosts.get(name), ours.hosts.get(name), theirs.hosts.get(name))
        if merged is not None:
            hosts[name] = merged
    if ours.placements == base.placements:
        placements = list(theirs.placements)
    else:
        before = set(base.placements)
        now = set(ours.placements)
        present = set(theirs.placements)
        placements = [p for p in theirs.placements if p in now or p not in before]
        placements += [p for p in ours.placements if p not in before and p not in present]
    return State(hosts, placements)


class Store(Protocol):
    """Where a process reads and changes the state (see the module's docstring)."""

    def snapshot(self) -> State:
        """The state now, a copy the caller may change (changes are not kept)."""
        ...

    def update(self) -> AbstractContextManager[State]:
        """The state to change in place, kept when the block ends without an exception.
        Nothing else changes it meanwhile; no I/O may happen in the block (no SSH)."""
        ...


@dataclasses.dataclass(frozen=True)
class FileStore:
    """The file itself, for a process without a daemon's copy: each look reads it, each
    change is a read-modify-write under the lock."""

    directory: Path

    def snapshot(self) -> State:
        with locked(self.directory):
            return read(self.directory)

    @contextlib.contextmanager
    def update(self) -> Iterator[State]:
        with locked(self.directory):
            state = read(self.directory)
            before = state.copy()
            yield state
            if state != before:
                write(self.directory, state)


# The daemon's copy, by the directory it serves (registered while it serves): in that
# process every reader and writer of the directory goes through the one copy, since a second
# view beside it would be a stale copy of its own.
_served: dict[Path, Store] = {}
_served_lock = threading.Lock()


def store(directory: Path) -> Store:
    """Where this process keeps the state of `directory`."""
    with _served_lock:
        served = _served.get(directory)
    return served if served is not None else FileStore(directory)


def serve_from(directory: Path, source: Store | None) -> None:
    """From now on `store(directory)` is `source` (None: the file again)."""
    with _served_lock:
        if source is None:
            _served.pop(directory, None)
        else:
            _served[directory] = source
