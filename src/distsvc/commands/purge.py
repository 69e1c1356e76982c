"""`distsvc purge [--kill] [--whitelist REGEX]...`: your stray processes on every host."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import distsvc.commands.common
import distsvc.commands.output


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="list (or end) your processes on every host",
                       description="List your processes on every host, except your ssh "
                       "sessions and service manager; --kill ends them (SIGTERM, then SIGKILL).")
    p.add_argument("--kill", action="store_true", help="end the processes listed")
    p.add_argument("--json", action="store_true",
                   help="machine-readable output (the summary line still goes to stderr)")
    p.add_argument("--whitelist", action="append", default=[], metavar="REGEX",
                   help="keep processes whose command line matches (repeatable)")
    distsvc.commands.common.add_config_options(p)


def run(args: argparse.Namespace) -> int:
    import distsvc.actions.purge

    config = distsvc.commands.common.load_config(args)
    results = distsvc.actions.purge.purge(config, args.whitelist, args.kill)
    verb = "killed" if args.kill else "found"
    status = 0
    for result in results:
        if result.error:
            print(f"distsvc: {result.host}: {result.error}", file=sys.stderr)
            status = 255
        for stray in result.strays if not args.json else []:
            print(f"{stray.host}\t{stray.pid}\t{stray.command}")
    if args.json:
        distsvc.commands.output.emit("purge", {"killed": args.kill, "hosts": [
            {"host": r.host, "error": r.error,
             "processes": [{"pid": s.pid, "command": s.command} for s in r.strays]}
            for r in results]})
    total = sum(len(r.strays) for r in results)
    print(f"{verb} {total} processes on {len(results)} hosts", file=sys.stderr)
    return status
