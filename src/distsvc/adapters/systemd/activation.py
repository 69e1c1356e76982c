"""Socket activation, readiness and watchdog notifications, the journal, why the service failed.

What the daemon needs from the systemd that started it. Everything degrades to a no-op when
the process was not started by systemd (no LISTEN_FDS, no NOTIFY_SOCKET, no JOURNAL_STREAM).

Socket activation and sd_notify are done here by hand (a few lines each, as sd_listen_fds(3)
and sd_notify(3) describe them), so the daemon works under systemd without systemd-python;
only the journal logger with its fields needs it, and without it log lines go to stderr,
which systemd puts in the journal too.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from typing import Any, ClassVar

LISTEN_FDS_START = 3
SERVICE = "distsvc.service"
SOCKET = "distsvc.socket"


def listening_socket() -> socket.socket | None:
    """The socket systemd passed us (socket activation), if any. Unsets the variables, so
    what we start does not take them for its own."""
    count, pid = os.environ.pop("LISTEN_FDS", ""), os.environ.pop("LISTEN_PID", "")
    os.environ.pop("LISTEN_FDNAMES", None)
    if not count.isdigit() or int(count) < 1 or pid != str(os.getpid()):
        return None
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
    return socket.socket(fileno=LISTEN_FDS_START)


def notify(**fields: Any) -> None:
    """sd_notify: notify(READY=1, STATUS="...") or notify(WATCHDOG=1): one datagram to
    $NOTIFY_SOCKET (a path, or an abstract name when it starts with @)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
    with contextlib.suppress(OSError), \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(message, address)


def journal_available() -> bool:
    """Whether systemd-python (the journal logger with fields) is installed."""
    try:
        import systemd.journal  # noqa: F401
    except ImportError:
        return False
    return True


def _systemctl_show(unit: str, *properties: str) -> dict[str, str]:
    import subprocess

    done = subprocess.run(["systemctl", "--user", "show", unit, "-p", ",".join(properties)],
                          capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    return dict(line.partition("=")[::2] for line in done.stdout.splitlines())


def service_failure() -> str | None:
    """Why the user manager's distsvc.service last failed (its result, status and last line in
    the journal), or None: no user manager, no such unit, or no failure."""
    import subprocess

    try:
        service = _systemctl_show(SERVICE, "LoadState", "Result", "ExecMainPID",
                                  "ExecMainStatus")
        if service.get("LoadState") != "loaded" or service.get("Result") in (None, "success"):
            return None
        said = ""
        if service.get("ExecMainPID", "0") != "0":
            # By PID: a process that exits right after writing may reach the journal without
            # its unit's name.
            done = subprocess.run(
                ["journalctl", "--user", f"_PID={service['ExecMainPID']}", "-o", "cat",
                 "-n", "20", "--no-pager"], capture_output=True, text=True, timeout=10,
                stdin=subprocess.DEVNULL)
            lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
            said = f": {lines[-1]}" if lines else ""
        text = (f"{SERVICE} failed ({service['Result']}, exit status "
                f"{service.get('ExecMainStatus', '?')}){said}")
        sock = _systemctl_show(SOCKET, "Result", "ActiveState")
        if sock.get("ActiveState") == "failed":
            text += (f"; {SOCKET} gave up ({sock.get('Result')}): after fixing it, "
                     f"systemctl --user reset-failed {SERVICE} {SOCKET} && "
                     f"systemctl --user start {SOCKET}")
        return text
    except (OSError, subprocess.SubprocessError):
        return None


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
    """Writes distsvc.log's entries to the journal with their fields (HOST=, LOAD=, JOB=...)."""

    PRIORITIES: ClassVar[dict[str, int]] = {
        "debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}

    def __init__(self) -> None:
        from systemd import journal

        self._send = journal.send

    def log(self, level: str, event: str, fields: dict[str, Any]) -> None:
        extra = {key.upper(): str(value) for key, value in fields.items()
                 if key not in ("level", "timestamp") and key.replace("_", "").isalnum()}
        self._send(event, PRIORITY=self.PRIORITIES.get(level, 6),
                   SYSLOG_IDENTIFIER="distsvc", **extra)
