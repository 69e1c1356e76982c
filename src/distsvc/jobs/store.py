"""Job records and output as files: one directory per job under `paths.jobs_dir`.

    ROOT/            0700
      last-id        the highest ID ever handed out (IDs are never reused)
      17/            0700, appears whole (made as .new-17-*, then renamed)
        job.json     the record (record.to_json), replaced atomically
        stdout       0600, written by systemd (StandardOutput=append:)
        stderr       0600

Every write that must survive a crash is atomic: a temporary file, fsync, rename, fsync of
the directory. So a reader sees the old record or the new one, never half of one, and a
record that is corrupt anyway (a full disk, a hand edit) is reported, never a crash.
Nothing here talks to systemd.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import distsvc.errors
from distsvc.jobs import record
from distsvc.jobs.record import FINAL, STREAMS, CorruptRecord, Job

_ID = re.compile(r"[1-9][0-9]{0,17}")
_COUNTER = "last-id"
_CHUNK = 1 << 20
MARKER = "[distsvc: {} bytes cut here (jobs.max_output)]\n"
_MARKER = re.compile(rb"\[distsvc: (\d{1,20}) bytes cut here \(jobs\.max_output\)\]\n")
_LEFTOVER_AGE = 3600.0   # a .new-* directory this old is a crashed create, not one in progress


class NoSuchJob(distsvc.errors.DistsvcError):
    """An ID with no job: a status of its own, so scripts tell it from other failures."""

    exit_status = distsvc.errors.EXIT_NO_SUCH_JOB

    def __init__(self, id: str) -> None:
        self.id = id
        shown = id if _ID.fullmatch(id) else json.dumps(id)
        super().__init__(f"no job {shown} (see `distsvc job list`)")


class StoreError(distsvc.errors.DistsvcError):
    """The job directory cannot be used (not ours, not a directory, not writable)."""


def ensure_root(root: Path) -> None:
    """Make the job directory (0700), or check that the existing one is private to us.

    A loose mode on our own directory is tightened; one owned by someone else, or a
    symlink, is refused: its records would not be ours.
    """
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(root)
    except OSError as error:
        raise StoreError(f"cannot use the job directory {root}: "
                         f"{error.strerror or error}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise StoreError(f"the job directory {root} is not a directory of yours "
                         f"(move it away and try again)")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(root, 0o700)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, chunks: Iterable[bytes]) -> None:
    """Replace `path` with `chunks` (0600): temporary file, fsync, rename, fsync directory."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive flock on the job directory itself (its own open file description, so it
    also excludes other threads of this process)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _highest_id(root: Path) -> int:
    highest = 0
    for name in os.listdir(root):
        # Directories of jobs, whole or being created or removed: ".new-17-x", ".removed-17-x".
        match = re.fullmatch(r"(?:\.new-|\.removed-)?([1-9][0-9]{0,17})(?:-.*)?", name)
        if match:
            highest = max(highest, int(match[1]))
    return highest


def new_id(root: Path) -> str:
    """A new job ID: "1", "2", ...; never one handed out before, even if that job was removed.

    The counter only grows, under an exclusive lock, so concurrent callers (threads or
    processes) each get their own. If the counter file is lost or garbled, the IDs of the
    jobs still there keep the next one above them (only IDs of jobs already removed could
    then come again).
    """
    ensure_root(root)
    with _locked(root):
        try:
            text = (root / _COUNTER).read_text(encoding="ascii").strip()
            last = int(text) if _ID.fullmatch(text) else 0
        except (FileNotFoundError, UnicodeDecodeError):
            last = 0
        number = max(last, _highest_id(root)) + 1
        _write_atomic(root / _COUNTER, [f"{number}\n".encode()])
    return str(number)


def origin(root: Path) -> str:
    """This store's name on hosts (jobs/remote.py): random hex made once, kept in the store,
    so the jobs of two machines (or two users' stores) never meet on a shared host."""
    ensure_root(root)
    path = root / "origin"
    with _locked(root):
        try:
            text = path.read_text(encoding="ascii").strip()
            if re.fullmatch(r"[0-9a-f]{16}", text):
                return text
        except (FileNotFoundError, UnicodeDecodeError):
            pass
        text = secrets.token_hex(8)
        _write_atomic(path, [f"{text}\n".encode()])
    return text


def _check_id(id: str) -> str:
    """IDs become path names: anything but a plain number is no job (and never `../x`)."""
    if not isinstance(id, str) or not _ID.fullmatch(id):
        raise NoSuchJob(str(id))
    return id


def encode(job: Job) -> str:
    """The record as its file holds it."""
    return json.dumps(record.to_json(job), indent=1, sort_keys=True) + "\n"


def _encode(job: Job) -> bytes:
    return encode(job).encode()


def create(root: Path, job: Job) -> Job:
    """A new job's directory with its record and empty output files (0600).

    Made under a temporary name and renamed into place, so `load_all` never meets a job
    without its record.
    """
    ensure_root(root)
    _check_id(job.id)
    final = root / job.id
    if os.path.lexists(final):
        raise StoreError(f"job {job.id}: its directory {final} exists already")
    building = Path(tempfile.mkdtemp(prefix=f".new-{job.id}-", dir=root))
    try:
        for stream in STREAMS:
            fd = os.open(building / stream, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o600)
            os.close(fd)
        _write_atomic(building / "job.json", [_encode(job)])
        os.rename(building, final)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    _fsync_dir(root)
    return job


def save(root: Path, job: Job) -> None:
    """Replace the job's record atomically; NoSuchJob if it was removed meanwhile."""
    directory = root / _check_id(job.id)
    try:
        _write_atomic(directory / "job.json", [_encode(job)])
    except FileNotFoundError:
        if not directory.is_dir():
            raise NoSuchJob(job.id) from None
        raise


def record_path(root: Path, id: str) -> Path:
    return root / _check_id(id) / "job.json"


def load(root: Path, id: str) -> Job:
    """The job's record; NoSuchJob, or CorruptRecord naming the file and why."""
    path = record_path(root, id)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if path.parent.is_dir():
            raise CorruptRecord("the file is missing", id, str(path)) from None
        raise NoSuchJob(id) from None
    except OSError as error:
        raise CorruptRecord(error.strerror or str(error), id, str(path)) from None
    try:
        job = record.from_json(json.loads(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        why = f"not JSON ({error})".replace("\n", " ")
        raise CorruptRecord(why, id, str(path)) from None
    except CorruptRecord as error:
        raise CorruptRecord(error.why, id, str(path)) from None
    if job.id != id:
        raise CorruptRecord(f"it is the record of job {job.id!r}", id, str(path))
    return job


def ids(root: Path) -> list[str]:
    """The IDs of the jobs there, newest (highest) first."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted((n for n in names if _ID.fullmatch(n)), key=int, reverse=True)


def load_all(root: Path) -> tuple[list[Job], list[CorruptRecord]]:
    """Every job, newest first, and the records that could not be read (to report them)."""
    jobs: list[Job] = []
    corrupt: list[CorruptRecord] = []
    for id in ids(root):
        try:
            jobs.append(load(root, id))
        except NoSuchJob:
            continue          # removed while we listed
        except CorruptRecord as error:
            corrupt.append(error)
    return jobs, corrupt


def remove(root: Path, id: str) -> None:
    """The job's directory with its record and output. Renamed away first, so a removal cut
    short leaves a hidden leftover (swept later), never a job with half its files."""
    source = root / _check_id(id)
    doomed = root / f".removed-{id}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        os.rename(source, doomed)
    except (FileNotFoundError, NotADirectoryError):
        raise NoSuchJob(id) from None
    _fsync_dir(root)
    shutil.rmtree(doomed, ignore_errors=True)


def sweep(root: Path, now: float) -> None:
    """Delete what crashed creates and removals left: .removed-* at once, .new-* after an
    hour (younger ones may be a create in progress in another process)."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return
    for name in names:
        path = root / name
        if name.startswith(".removed-"):
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(".new-"):
            with contextlib.suppress(OSError):
                if now - os.lstat(path).st_mtime > _LEFTOVER_AGE:
                    shutil.rmtree(path, ignore_errors=True)


def output_path(root: Path, id: str, stream: str, attempt: int | None = None) -> Path:
    """A stream's file: the current attempt's, or an ended attempt's (kept by keep_attempt)."""
    if stream not in STREAMS:
        raise ValueError(f"not an output stream: {stream!r}")
    name = stream if attempt is None else f"{stream}.{int(attempt)}"
    return root / _check_id(id) / name


def keep_attempt(root: Path, id: str, attempt: int) -> None:
    """Before a retry: the ended attempt's output moves to `stdout.N`/`stderr.N`, and the next
    attempt starts with empty files."""
    for stream in STREAMS:
        current = output_path(root, id, stream)
        os.replace(current, output_path(root, id, stream, attempt))
        os.close(os.open(current, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    _fsync_dir(root / id)


# A job that does not start at once (queued: a slot, its dependencies, a retry) keeps the
# environment it was submitted with until its last attempt has started: in a 0600 file of its
# own directory (0700), never in the record, which `status --json` shows.
def save_env(root: Path, id: str, env: Mapping[str, str]) -> None:
    _write_atomic(root / _check_id(id) / "env.json", [json.dumps(dict(env)).encode()])


def load_env(root: Path, id: str) -> dict[str, str]:
    """The saved environment; StoreError when missing or unreadable."""
    path = root / _check_id(id) / "env.json"
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise StoreError(f"job {id}: its saved environment {path} cannot be read ({error})"
                         ) from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise StoreError(f"job {id}: its saved environment {path} is malformed")
    return data


def remove_env(root: Path, id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(root / _check_id(id) / "env.json")


def _id_key(id: str) -> tuple[int, str]:
    return (int(id), id) if id.isdigit() else (0, id)


def expired(jobs: Iterable[Job], keep: int, max_age: float, now: float) -> list[str]:
    """The IDs retention removes: finished jobs beyond the `keep` that ended last, and
    finished jobs that ended more than `max_age` seconds before `now`. Jobs still running
    are never expired and do not count against `keep`. Ranked by their end, not their start:
    a long job outlived by many short ones is the newest to end, not the first to go."""
    done = sorted((j for j in jobs if j.state in FINAL),
                  key=lambda j: (j.ended or j.created, _id_key(j.id)), reverse=True)
    return [job.id for index, job in enumerate(done)
            if index >= keep or now - (job.ended or job.created) > max_age]


def cut_output(path: Path, max_bytes: int) -> int:
    """Keep only the last `max_bytes` of an output file, behind one marker line
    `[distsvc: N bytes cut here (jobs.max_output)]`; returns the bytes dropped now (0 if the
    file was within the limit).

    Atomic (a new file renamed over the old), so readers see either file whole; readers that
    hold the old one open read it to its end. Only for finished jobs: a running job writes
    on into the old file. A file cut before keeps one marker, with the total dropped, and
    its marker does not count against `max_bytes`, so cutting again to the same size drops
    nothing.
    """
    with open(path, "rb") as source:
        size = os.fstat(source.fileno()).st_size
        marker = _MARKER.match(source.read(80))
        cut_before = int(marker[1]) if marker else 0
        start = marker.end() if marker else 0
        if size - start <= max_bytes:
            return 0
        dropped = size - start - max_bytes
        source.seek(size - max_bytes)

        def chunks() -> Iterator[bytes]:
            yield MARKER.format(cut_before + dropped).encode()
            left = max_bytes
            while left > 0:
                chunk = source.read(min(_CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk

        _write_atomic(path, chunks())
    return dropped


def cut_job_output(root: Path, job: Job, max_bytes: int) -> Job:
    """Cut a finished job's streams to their last `max_bytes` each (jobs.max_output), add
    what was dropped to the record's `output_cut`, and save the record if anything was cut.

    A crash between a cut and the save leaves the record short of the truth; the marker in
    the file keeps the true total.
    """
    if job.state not in FINAL:
        raise ValueError(f"job {job.id} is {job.state}: only a finished job's output is cut")
    cut = False
    for stream in STREAMS:
        dropped = cut_output(output_path(root, job.id, stream), max_bytes)
        if dropped:
            job.output_cut[stream] = job.output_cut.get(stream, 0) + dropped
            cut = True
    if cut:
        save(root, job)
    return job
