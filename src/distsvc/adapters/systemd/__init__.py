"""The systemd adapter: the one place distsvc talks to systemd.

Two modules: `activation` (what the daemon needs from the systemd that started it: socket
activation, sd_notify, the journal, why the service last failed; no library needed) and `units`
(transient units on a service manager through pystemd, for jobs and limited foreground
commands). Importing the package loads neither pystemd nor systemd-python: `units` imports
pystemd only when a `Manager` is made.
"""

from distsvc.adapters.systemd.activation import (
    LISTEN_FDS_START,
    SERVICE,
    SOCKET,
    JournalLogger,
    journal_available,
    listening_socket,
    notify,
    service_failure,
    under_systemd,
    watchdog_interval,
)

__all__ = [
    "LISTEN_FDS_START",
    "SERVICE",
    "SOCKET",
    "JournalLogger",
    "journal_available",
    "listening_socket",
    "notify",
    "service_failure",
    "under_systemd",
    "watchdog_interval",
]
