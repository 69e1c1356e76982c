"""Logging: readable lines on stderr for commands and a daemon started by hand; entries
with structured fields (HOST=, LOAD=, JOB=, ...) in the journal under systemd.

Commands log only warnings by default (the user's terminal belongs to the command they run);
`DISTSVC_LOG=debug` shows everything.

A daemon started by a client writes to a log file (paths.daemon_log): each start is marked
by a line of the client's (START_MARK), so `last_start_failure` tells whether the last start
got as far as "daemon ready" and, if not, what it said last. The daemon keeps the file under
LOG_LIMIT bytes by renaming it to daemon.log.1 (replacing the previous one) when it grows.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOG_LIMIT = 1 << 20
START_MARK = "--- distsvc daemon start: "
READY = "daemon ready"  # what serve() logs once it accepts connections
# What a start that failed leaves: the daemon's own line, a traceback, an argparse error.
FAILED = ("daemon cannot start", "Traceback (most recent call last)", ": error: ")


def _rotate(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_LIMIT:
            path.replace(path.with_name(path.name + ".1"))


def open_daemon_log(path: Path, why: str) -> int:
    """The daemon log opened for appending (made 0600, rotated if too big), with a line that
    marks a new start; an fd for the daemon's stdout and stderr."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _rotate(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    os.write(fd, f"{START_MARK}{stamp}, {why}\n".encode())
    return fd


def last_start_failure(path: Path) -> str | None:
    """What the last daemon start said last if it failed before getting ready, else None."""
    try:
        with open(path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 65536))
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    marks = [i for i, line in enumerate(lines) if line.startswith(START_MARK)]
    if not marks:
        return None
    since = [line.strip() for line in lines[marks[-1] + 1:] if line.strip()]
    if any(READY in line for line in since) or not any(
            mark in line for line in since for mark in FAILED):
        return None
    when = lines[marks[-1]].removeprefix(START_MARK).split(",")[0]
    return f"the daemon started at {when} said: {since[-1]}"


class _LogFile:
    """stderr when it is the daemon's log file: rotated once it outgrows LOG_LIMIT (the new
    file replaces fd 2, so tracebacks follow)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.checks = 0

    def write(self, text: str) -> None:
        sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()
        self.checks += 1
        if self.checks % 100:
            return
        with contextlib.suppress(OSError):
            if os.fstat(2).st_size > LOG_LIMIT:
                _rotate(self.path)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             0o600)
                os.dup2(fd, 2)
                os.dup2(fd, 1)
                os.close(fd)


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_LEVEL_WIDTH = 9  # the bracketed level padded as structlog's ConsoleRenderer did: [info     ]
_EVENT_WIDTH = 30


class _Sink:
    """Where log entries go and from which level: set once by configure()."""

    def __init__(self, threshold: int, write: Callable[[str, str, dict[str, Any]], None]):
        self.threshold = threshold
        self.write = write


_sink: _Sink | None = None


class Logger:
    """A logger with bound fields: `log.info("host measured", host=h, load=1.2)`.

    Our own, not structlog's: `import structlog` imports asyncio (its native and stdlib
    loggers do), ~30-80 ms of a daemon's cold start on a loaded machine, for a few dozen
    calls that need only what is here. The lines look as structlog's ConsoleRenderer made
    them, and the journal gets the same fields (adapters/systemd.JournalLogger)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def bind(self, **fields: Any) -> Logger:
        return Logger({**self.fields, **fields})

    def _log(self, level: str, event: str, args: tuple[Any, ...], fields: dict[str, Any],
             exc_info: bool = False) -> None:
        sink = _sink or configure()
        if _LEVELS[level] < sink.threshold:
            return
        if args:
            event = event % args
        merged = {**self.fields, **fields}
        if exc_info and sys.exc_info()[0] is not None:
            import traceback

            merged["exception"] = traceback.format_exc().rstrip("\n")
        sink.write(level, event, merged)

    def debug(self, event: str, *args: Any, **fields: Any) -> None:
        self._log("debug", event, args, fields)

    def info(self, event: str, *args: Any, **fields: Any) -> None:
        self._log("info", event, args, fields)

    def warning(self, event: str, *args: Any, **fields: Any) -> None:
        self._log("warning", event, args, fields)

    def error(self, event: str, *args: Any, **fields: Any) -> None:
        self._log("error", event, args, fields)

    def exception(self, event: str, *args: Any, **fields: Any) -> None:
        """An error with the traceback of the exception being handled."""
        self._log("error", event, args, fields, exc_info=True)


def line(level: str, event: str, fields: dict[str, Any], stamp: str | None) -> str:
    """One entry as a line (then the traceback, if any): time, [level], event, key=value
    sorted by key (strings as they are, anything else as its repr)."""
    fields = dict(fields)
    exception = fields.pop("exception", None)
    pairs = " ".join(f"{key}={value if isinstance(value, str) else repr(value)}"
                     for key, value in sorted(fields.items()))
    text = f"[{level:<{_LEVEL_WIDTH}}] {event:<{_EVENT_WIDTH}} {pairs}".rstrip()
    if stamp is not None:
        text = f"{time.strftime(stamp)} {text}"
    return text + (f"\n{exception}" if exception else "")


def configure(level: str | None = None, log_file: Path | None = None) -> _Sink:
    import distsvc.adapters.systemd

    global _sink
    name = (level or os.environ.get("DISTSVC_LOG") or "warning").lower()
    threshold = _LEVELS.get(name, _LEVELS["warning"])
    journal = distsvc.adapters.systemd.under_systemd(os.environ)
    if journal and distsvc.adapters.systemd.journal_available():
        logger = distsvc.adapters.systemd.JournalLogger()

        def write(level: str, event: str, fields: dict[str, Any]) -> None:
            logger.log(level, event, fields)
    else:
        # Under systemd without systemd-python: plain lines on stderr, which systemd puts in
        # the journal with its own time stamps (the fields are then part of the text).
        stamp = None if journal else "%Y-%m-%d %H:%M:%S" if log_file else "%H:%M:%S"
        out: Any = _LogFile(log_file) if log_file else None

        def write(level: str, event: str, fields: dict[str, Any]) -> None:
            stream = out or sys.stderr  # looked up each time: tests replace sys.stderr
            stream.write(line(level, event, fields, stamp) + "\n")
            stream.flush()
    _sink = _Sink(threshold, write)
    return _sink


def get(**fields: Any) -> Logger:
    return Logger(fields)
