"""`distsvc scan`: one pass of the scan timer (distsvc-scan.service runs it)."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import distsvc.commands.common


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="measure the hosts that are due (the scan timer runs this)")
    distsvc.commands.common.add_config_options(p)


def through_daemon(config: Any) -> list[str] | None:
    """A running daemon measures over its warm connections (a third of the time, a sixth of
    the CPU for 200 hosts); one that is not running is not woken for it. None: no daemon."""
    import distsvc.actions.client
    import distsvc.adapters.unix
    import distsvc.config

    path = distsvc.adapters.unix.find_socket(os.environ)
    if not distsvc.actions.client.enabled(os.environ) or path is None or not (
            distsvc.adapters.unix.daemon_running(path)):
        return None
    request = {"type": "scan", "config": distsvc.config.to_mapping(config)}
    try:
        # A pass probes 32 hosts at a time, each within probe_timeout.
        timeout = 30 + config.probe_timeout * (len(config.hosts) / 32 + 1)
        measured: list[str] = distsvc.actions.client.query(
            request, os.environ, timeout)["measured"]
    except distsvc.actions.client.Unavailable:
        return None
    return measured


def run(args: argparse.Namespace) -> int:
    import distsvc.actions.scan
    import distsvc.adapters.ssh
    import distsvc.adapters.systemd
    import distsvc.log

    distsvc.log.configure(os.environ.get("DISTSVC_LOG") or "info")
    config = distsvc.commands.common.load_config(args)
    measured = through_daemon(config)
    daemon_used = measured is not None
    if measured is None:
        pool = distsvc.adapters.ssh.Pool(keep=False)  # one pass: nothing to keep warm for
        try:
            measured = distsvc.actions.scan.timer_pass(config, os.environ, pool)
        finally:
            pool.close_all()
    distsvc.log.get().info("scan pass done", hosts=len(measured),
                           through="daemon" if daemon_used else "process")
    if distsvc.adapters.systemd.under_systemd(os.environ):
        # journald learns an entry's unit from the sender's cgroup when it reads the entry;
        # a oneshot that exits at once can lose that (`journalctl -u` would miss it).
        time.sleep(0.2)
    return 0
