"""`distsvc run [--all] [options] CMD...`: like distsvc-run, or on every host with --all."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import distsvc.actions.relay
import distsvc.actions.remote_all
import distsvc.actions.run
import distsvc.commands.common
import distsvc.commands.output
import distsvc.commands.run
import distsvc.environment
import distsvc.errors
import distsvc.paths

# With --json, each host's stdout and stderr are kept up to this many bytes each (the rest is
# counted): one document holds every host's output, so its size is bounded per host.
JSON_MAX_OUTPUT = 65536


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name, help="run a command on the best host, or on every host with --all",
        parents=[distsvc.commands.run.parser()], add_help=False, conflict_handler="resolve")
    p.add_argument("--all", action="store_true",
                   help="run on every host at once (stdin is not read: the commands read "
                   "end-of-file); output lines are prefixed by host; the "
                   "status is the highest of them (255 if a host was unreachable, 128+N if "
                   "signal N stopped the run)")
    p.add_argument("-j", "--jobs", metavar="N",
                   help="with --all: at most N hosts at once (default: all of them, up to "
                   f"{distsvc.actions.remote_all.DEFAULT_MAX_JOBS}; at most "
                   f"{distsvc.actions.remote_all.MAX_JOBS})")
    p.add_argument("--json", action="store_true",
                   help="with --all: once every host is done, one JSON document with each "
                   f"host's status, error, and output (up to {JSON_MAX_OUTPUT} bytes of "
                   "each stream) instead of prefixed lines")


def _jobs(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        jobs = int(value)
    except ValueError:
        jobs = 0
    if not 1 <= jobs <= distsvc.actions.remote_all.MAX_JOBS:
        raise distsvc.errors.UsageError(
            f"-j/--jobs: {value!r} is not a number of hosts from 1 to "
            f"{distsvc.actions.remote_all.MAX_JOBS}")
    return jobs


def _run_all(args: argparse.Namespace, command: list[str]) -> int:
    jobs = _jobs(args.jobs)
    # Caught from here on: a signal at any moment stops the run cleanly.
    with distsvc.actions.relay.SignalCatcher() as signals:
        config = distsvc.commands.common.load_config(args)
        if not config.hosts:
            raise distsvc.errors.CannotRun("--all: no hosts configured")
        saved = distsvc.environment.load_saved(
            distsvc.paths.saved_environment_file(os.environ))
        env = distsvc.environment.carried(os.environ, config.env, saved)
        workdir = args.workdir or distsvc.actions.run.current_directory(os.environ)
        result = distsvc.actions.remote_all.run_everywhere(
            command, workdir, env, config, os.environ, signals, jobs, args.quiet,
            capture=JSON_MAX_OUTPUT if args.json else None)
    if args.json:
        distsvc.commands.output.emit("run --all", json_data(result))
    # -q leaves out the hosts that merely exited non-zero, never the ones that could not run.
    failed = [o for o in result.outcomes if o.status != 0 and (o.error or not args.quiet)]
    if failed:
        print("distsvc: failed on " + ", ".join(
            f"{o.host} ({o.error or f'exit {o.status}'})" for o in failed), file=sys.stderr)
    if result.interrupted is not None:
        return 128 + result.interrupted
    return max((o.status for o in result.outcomes), default=0)


def json_data(result: distsvc.actions.remote_all.Result) -> dict[str, Any]:
    """`run --all --json`'s fields (docs/json.md). Output is decoded as UTF-8, a byte that is
    not UTF-8 becoming U+FFFD: JSON carries text (plain `run --all` keeps bytes as they are)."""
    return {"hosts": [{"host": o.host, "status": o.status, "error": o.error,
                       "stdout": o.stdout.decode(errors="replace"),
                       "stderr": o.stderr.decode(errors="replace"),
                       "stdout_cut": o.stdout_cut, "stderr_cut": o.stderr_cut}
                      for o in result.outcomes],
            "interrupted": result.interrupted}


def run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.jobs is not None and not args.all:
        raise distsvc.errors.UsageError("-j/--jobs goes with --all")
    if args.json and not args.all:
        raise distsvc.errors.UsageError(
            "--json goes with --all (a command on one host gives its own output as it is)")
    if not command:
        raise distsvc.errors.UsageError("no command given (usage: distsvc run [--all] CMD...)")
    if args.all and args.on is not None:
        raise distsvc.errors.UsageError("--all and --on: a cluster's command runs once, "
                                        "through srun (leave one out)")
    if args.all:
        return _run_all(args, command)
    return distsvc.commands.run.run_parsed(args, command)
