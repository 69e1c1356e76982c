"""`distsvc status [--json]`: the daemon's health."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="show the daemon's health")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    import distsvc.actions.client

    try:
        answer = distsvc.actions.client.query({"type": "status"}, os.environ)
    except distsvc.actions.client.Unavailable as why:
        print(f"distsvc daemon: not running ({why}); commands work without it, and the next "
              "one starts it (or: systemctl --user enable --now distsvc.socket)")
        return 3
    if args.json:
        print(json.dumps(answer, indent=1))
        return 0
    hosts = answer["hosts"]
    ages = [h["age"] for h in hosts.values() if h["age"] is not None]
    up = sum(1 for h in hosts.values() if h["state"] == "up")
    print(f"distsvc daemon {answer['version']}: running (pid {answer['pid']}), "
          f"up {answer['uptime']:.0f} s")
    print(f"  hosts:       {len(hosts)} known, {up} up"
          + (f", measured {min(ages):.0f}-{max(ages):.0f} s ago" if ages else ""))
    print(f"  connections: {answer['connections']} held")
    print(f"  jobs:        {len(answer['jobs'])} running")
    for job in answer["jobs"]:
        print(f"    #{job['id']} on {job['host']}: {' '.join(job['argv'])[:60]}")
    return 0
