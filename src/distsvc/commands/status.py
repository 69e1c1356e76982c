"""`distsvc status [--json]`: the daemon's health, or why none is running."""

from __future__ import annotations

import argparse
import os
from typing import Any

import distsvc.commands.output

# The daemon's `status` answer -> the fields of `status --json` (docs/json.md): "version" is
# the daemon's, not the schema's. Every field is there whether a daemon runs or not (null
# when none does), so a script reads the same keys either way.
FIELDS = {"version": "daemon_version", "pid": "pid", "uptime": "uptime", "config": "config",
          "hosts_configured": "hosts_configured", "hosts": "hosts", "rss_kib": "rss_kib",
          "connections": "connections", "connections_per_host": "connections_per_host",
          "retiring": "retiring", "jobs": "jobs"}


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="show the daemon's health")
    p.add_argument("--json", action="store_true", help=distsvc.commands.output.HELP)


def last_failure() -> str | None:
    """Why the last daemon start failed: from the user manager (journal) or the log file."""
    import distsvc.adapters.systemd
    import distsvc.log
    import distsvc.paths

    failure = distsvc.adapters.systemd.service_failure()
    if failure is not None:
        return failure
    path = distsvc.paths.daemon_log(os.environ)
    failure = distsvc.log.last_start_failure(path)
    return None if failure is None else f"{failure} (log: {path})"


def run(args: argparse.Namespace) -> int:
    import distsvc.actions.client
    import distsvc.commands.output

    try:
        answer = distsvc.actions.client.query({"type": "status"}, os.environ)
    except distsvc.actions.client.Unavailable as why:
        failure = last_failure()
        if args.json:
            distsvc.commands.output.emit("status", {
                "running": False, **{field: None for field in FIELDS.values()},
                "why": str(why), "last_failure": failure})
            return 3
        print(f"distsvc daemon: not running ({why}); commands work without it, and the next "
              "one starts it (or: systemctl --user enable --now distsvc.socket)")
        if failure:
            print(f"  last start failed: {failure}")
        return 3
    if args.json:
        distsvc.commands.output.emit("status", {
            "running": True, **{field: answer.get(key) for key, field in FIELDS.items()},
            "why": None, "last_failure": None})
        return 0
    hosts = answer["hosts"]
    ages = [h["age"] for h in hosts.values() if h["age"] is not None]
    up = sum(1 for h in hosts.values() if h["state"] == "up")
    print(f"distsvc daemon {answer['version']}: running (pid {answer['pid']}), "
          f"up {answer['uptime']:.0f} s"
          + (", retiring (a newer version is installed)" if answer.get("retiring") else ""))
    if answer.get("rss_kib") is not None:
        print(f"  memory:      {answer['rss_kib'] / 1024:.1f} MiB resident")
    print(f"  hosts:       {len(hosts)} known, {up} up"
          + (f", measured {min(ages):.0f}-{max(ages):.0f} s ago" if ages else ""))
    per_host = answer.get("connections_per_host") or {}
    print(f"  connections: {answer['connections']} open"
          + (" (" + ", ".join(f"{h} {n}" for h, n in sorted(per_host.items())) + ")"
             if per_host else ""))
    print(f"  jobs:        {len(answer['jobs'])} running")
    for job in answer["jobs"]:
        print(f"    #{job['id']} on {job['host']}: {' '.join(job['argv'])[:60]}")
    return 0
