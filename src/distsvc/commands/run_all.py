"""`distsvc run [--all] [options] CMD...`: like distsvc-run, or on every host with --all."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import distsvc.actions.run
import distsvc.commands.common
import distsvc.commands.run
import distsvc.environment
import distsvc.errors
import distsvc.paths


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name, help="run a command on the best host, or on every host with --all",
        parents=[distsvc.commands.run.parser()], add_help=False, conflict_handler="resolve")
    p.add_argument("--all", action="store_true",
                   help="run on every host at once; output lines are prefixed by host; the "
                   "status is the highest of them (255 if a host was unreachable)")


def _run_all(args: argparse.Namespace, command: list[str]) -> int:
    import distsvc.actions.remote_all

    config = distsvc.commands.common.load_config(args)
    if not config.hosts:
        raise distsvc.errors.CannotRun("--all: no hosts configured")
    saved = distsvc.environment.load_saved(distsvc.paths.saved_environment_file(os.environ))
    env = distsvc.environment.carried(os.environ, config.env, saved)
    workdir = args.workdir or distsvc.actions.run.current_directory(os.environ)
    outcomes = distsvc.actions.remote_all.run_everywhere(command, workdir, env, config)
    failed = [o for o in outcomes if o.status != 0]
    if failed and not args.quiet:
        print("distsvc: failed on " + ", ".join(
            f"{o.host} ({o.error or f'exit {o.status}'})" for o in failed), file=sys.stderr)
    return max((o.status for o in outcomes), default=0)


def run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise distsvc.errors.UsageError("no command given (usage: distsvc run [--all] CMD...)")
    if args.all:
        return _run_all(args, command)
    config = distsvc.commands.common.load_config(args)
    return distsvc.actions.run.run(
        command, distsvc.commands.run.options_from(args), config, os.environ)
