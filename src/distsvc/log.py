"""Logging through structlog: readable lines on stderr for commands and a daemon started by
hand; entries with structured fields (HOST=, LOAD=, JOB=, ...) in the journal under systemd.

Commands log only warnings by default (the user's terminal belongs to the command they run);
`DISTSVC_LOG=debug` shows everything.

A daemon started by a client writes to a log file (paths.daemon_log): each start is marked
by a line of the client's (START_MARK), so `last_start_failure` tells whether the last start
got as far as "daemon ready" and, if not, what it said last. The daemon keeps the file under
LOG_LIMIT bytes by renaming it to daemon.log.1 (replacing the previous one) when it grows.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import time
import types
from pathlib import Path
from typing import Any, TextIO, cast

LOG_LIMIT = 1 << 20
START_MARK = "--- distsvc daemon start: "
READY = "daemon ready"  # what serve() logs once it accepts connections
# What a start that failed leaves: the daemon's own line, a traceback, an argparse error.
FAILED = ("daemon cannot start", "Traceback (most recent call last)", ": error: ")
_configured = False


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


class _OnFirstUse(types.ModuleType):
    """Stands for a module in structlog's modules; the first use imports the real one."""

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


# What structlog imports but uses only in what distsvc never calls: asyncio for its async
# logging methods (asyncio brings ssl and OpenSSL's libssl: 2.6 MiB of a daemon's resident
# memory, ~15 ms of every start); uuid (and with it platform) for its deprecated threadlocal
# module's wrap_dict (8M of the ~455M instructions of a daemon's start-up imports).
_NOT_AT_IMPORT = ("asyncio", "uuid")


def _import_structlog() -> None:
    """Import structlog with stand-ins for _NOT_AT_IMPORT, which are imported only if
    something uses them (the stand-ins leave sys.modules when structlog is in)."""
    if "structlog" in sys.modules:
        return
    stand_ins = {name: _OnFirstUse(name) for name in _NOT_AT_IMPORT if name not in sys.modules}
    sys.modules.update(stand_ins)
    try:
        import structlog  # noqa: F401  (its `import asyncio`, `import uuid` get the stand-ins)
    finally:
        for name, stand_in in stand_ins.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]


def configure(level: str | None = None, log_file: Path | None = None) -> None:
    # Imported here: structlog costs ~15 ms, paid only when something logs.
    _import_structlog()
    import structlog

    import distsvc.adapters.systemd

    global _configured
    name = (level or os.environ.get("DISTSVC_LOG") or "warning").upper()
    wrapper = structlog.make_filtering_bound_logger(
        logging.getLevelNamesMapping().get(name, logging.WARNING))
    journal = distsvc.adapters.systemd.under_systemd(os.environ)
    if journal and distsvc.adapters.systemd.journal_available():
        structlog.configure(
            processors=[structlog.processors.format_exc_info],
            wrapper_class=wrapper,
            logger_factory=distsvc.adapters.systemd.JournalLogger,
            cache_logger_on_first_use=True)
    else:
        # Under systemd without systemd-python: plain lines on stderr, which systemd puts in
        # the journal with its own time stamps (the fields are then part of the text).
        stamp = [] if journal else [structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S"
                                                                      if log_file else "%H:%M:%S")]
        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                *stamp,
                structlog.dev.ConsoleRenderer(colors=False),
            ],
            wrapper_class=wrapper,
            logger_factory=structlog.PrintLoggerFactory(
                cast(TextIO, _LogFile(log_file)) if log_file else sys.stderr),
            cache_logger_on_first_use=True)
    _configured = True


def get(**fields: Any) -> Any:
    if not _configured:
        configure()
    import structlog

    return structlog.get_logger("distsvc").bind(**fields)
