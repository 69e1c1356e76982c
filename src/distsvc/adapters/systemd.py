"""The systemd adapter: socket activation, readiness and watchdog notifications, the journal.

The one place distsvc talks to systemd. Everything degrades to a no-op when the process was
not started by systemd (no LISTEN_FDS, no NOTIFY_SOCKET, no JOURNAL_STREAM).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any, ClassVar


def listening_socket() -> socket.socket | None:
    """The socket systemd passed us (socket activation), if any."""
    if not os.environ.get("LISTEN_FDS"):
        return None
    from systemd import daemon

    fds = daemon.listen_fds()  # also checks LISTEN_PID and unsets the variables
    if not fds:
        return None
    return socket.socket(fileno=fds[0])


def notify(**fields: Any) -> None:
    """sd_notify: notify(READY=1, STATUS="...") or notify(WATCHDOG=1)."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    from systemd import daemon

    daemon.notify("\n".join(f"{key}={value}" for key, value in fields.items()))


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings systemd expects (half its timeout), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


def under_systemd(environ: Mapping[str, str]) -> bool:
    """Whether stderr goes to the journal (systemd sets JOURNAL_STREAM for its services)."""
    return bool(environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID"))


class JournalLogger:
    """A structlog logger writing entries with fields (HOST=, LOAD=, JOB=...) to the journal."""

    PRIORITIES: ClassVar[dict[str, int]] = {
        "debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}

    def __init__(self, *_args: Any) -> None:
        from systemd import journal

        self._send = journal.send

    def _log(self, level: str, event: str = "", **fields: Any) -> None:
        extra = {key.upper(): str(value) for key, value in fields.items()
                 if key not in ("level", "timestamp") and key.replace("_", "").isalnum()}
        self._send(event, PRIORITY=self.PRIORITIES.get(level, 6),
                   SYSLOG_IDENTIFIER="distsvc", **extra)

    def __getattr__(self, level: str) -> Any:
        return lambda **kw: self._log(level, **kw)
