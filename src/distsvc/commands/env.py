"""`distsvc env export|print|set|delete`: the saved environment sent with every command.

Saved variables are added to (and override) the live environment of each command; useful
when distsvc is started from a context with a bare environment (cron, an IDE).
"""

from __future__ import annotations

import argparse
import os
import shlex
from typing import Any

import distsvc.commands.common
import distsvc.commands.output
import distsvc.environment
import distsvc.errors
import distsvc.paths
import distsvc.remote


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="manage the saved environment")
    actions = p.add_subparsers(dest="env_action", metavar="ACTION", required=True)
    export = actions.add_parser("export", help="save the current environment (after the "
                                "config's allow/deny filter)")
    distsvc.commands.common.add_config_options(export)
    print_ = actions.add_parser("print", help="show the saved environment as shell "
                                "assignments")
    print_.add_argument("--json", action="store_true", help=distsvc.commands.output.HELP)
    set_ = actions.add_parser("set", help="save one variable")
    set_.add_argument("name", metavar="NAME", help="the variable's name")
    set_.add_argument("value", metavar="VALUE", help="its value")
    delete = actions.add_parser("delete", help="remove saved variables")
    delete.add_argument("names", nargs="*", metavar="NAME", help="the variables to remove")
    delete.add_argument("--all", action="store_true", help="remove the whole saved environment")


def run(args: argparse.Namespace) -> int:
    path = distsvc.paths.saved_environment_file(os.environ)
    if args.env_action == "export":
        config = distsvc.commands.common.load_config(args)
        variables = distsvc.environment.carried(os.environ, config.env, {})
        distsvc.environment.store_saved(path, variables)
        print(f"saved {len(variables)} variables to {path}")
        return 0
    if args.env_action == "delete" and args.all:
        path.unlink(missing_ok=True)
        return 0
    saved = distsvc.environment.load_saved(path)
    if args.env_action == "print" and args.json:
        distsvc.commands.output.emit("env print", {"variables": dict(sorted(saved.items()))})
        return 0
    if args.env_action == "print":
        for name, value in sorted(saved.items()):
            print(f"{name}={shlex.quote(value)}")
        return 0
    if args.env_action == "set":
        if not distsvc.remote.exportable({args.name: ""}):
            raise distsvc.errors.UsageError(f"{args.name!r} is not a valid variable name")
        saved[args.name] = args.value
    else:
        if not args.names:
            raise distsvc.errors.UsageError("name the variables to delete, or use --all")
        missing = [n for n in args.names if n not in saved]
        if missing:
            raise distsvc.errors.UsageError(f"not in the saved environment: {' '.join(missing)}")
        for name in args.names:
            del saved[name]
    distsvc.environment.store_saved(path, saved)
    return 0
