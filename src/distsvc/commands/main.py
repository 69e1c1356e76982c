"""`distsvc SUBCOMMAND`: hosts, best, run, job, status, config check, env, purge, daemon, scan,
install-units."""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

import distsvc.commands.common
import distsvc.commands.parsing

# Each subcommand's module (with add_parser and run), imported only when its parser is built:
# `distsvc job start` need not load what `distsvc hosts` uses.
SUBCOMMANDS = {
    "hosts": "hosts",
    "best": "best",
    "run": "run_all",
    "job": "job",
    "status": "status",
    "config": "config_check",
    "env": "env",
    "purge": "purge",
    "daemon": "daemon",
    "scan": "scan",
    "install-units": "install_units",
    "complete": "complete",  # hidden: for the completion scripts (commands/complete.py)
}


def module(name: str) -> ModuleType:
    return importlib.import_module(f"distsvc.commands.{SUBCOMMANDS[name]}")


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with `only` (a subcommand named first on the command line) just
    that subcommand's: the same arguments, without importing the others."""
    p = distsvc.commands.parsing.Parser(
        prog="distsvc", description="Run commands on the least-loaded of your SSH hosts.")
    p.add_argument("--version", action="version",
                   version=distsvc.commands.common.version_string())
    sub = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    for name in [only] if only in SUBCOMMANDS else SUBCOMMANDS:
        module(name).add_parser(sub, name)
    return p


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the program
        distsvc.commands.common.standard_fds_open()
    argv = sys.argv[1:] if argv is None else argv
    args = parser(argv[0] if argv else None).parse_args(argv)
    return distsvc.commands.common.guarded(lambda: int(module(args.subcommand).run(args)))


if __name__ == "__main__":
    sys.exit(main())
