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


def run(args: argparse.Namespace) -> int:
    import distsvc.actions.scan
    import distsvc.adapters.ssh
    import distsvc.adapters.systemd
    import distsvc.log

    distsvc.log.configure(os.environ.get("DISTSVC_LOG") or "info")
    config = distsvc.commands.common.load_config(args)
    pool = distsvc.adapters.ssh.Pool()
    try:
        measured = distsvc.actions.scan.timer_pass(config, os.environ, pool)
    finally:
        pool.close_all()
    distsvc.log.get().info("scan pass done", hosts=len(measured))
    if distsvc.adapters.systemd.under_systemd(os.environ):
        # journald learns an entry's unit from the sender's cgroup when it reads the entry;
        # a oneshot that exits at once can lose that (`journalctl -u` would miss it).
        time.sleep(0.2)
    return 0
