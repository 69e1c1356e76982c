"""`distsvc SUBCOMMAND`: hosts, best, run, job, status, config check, env, purge, daemon, scan."""

from __future__ import annotations

import argparse
import sys

import distsvc.commands.best
import distsvc.commands.common
import distsvc.commands.config_check
import distsvc.commands.daemon
import distsvc.commands.env
import distsvc.commands.hosts
import distsvc.commands.job
import distsvc.commands.purge
import distsvc.commands.run_all
import distsvc.commands.scan
import distsvc.commands.status

SUBCOMMANDS = {
    "hosts": distsvc.commands.hosts,
    "best": distsvc.commands.best,
    "run": distsvc.commands.run_all,
    "job": distsvc.commands.job,
    "status": distsvc.commands.status,
    "config": distsvc.commands.config_check,
    "env": distsvc.commands.env,
    "purge": distsvc.commands.purge,
    "daemon": distsvc.commands.daemon,
    "scan": distsvc.commands.scan,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="distsvc", description="Run commands on the least-loaded of your SSH hosts.")
    p.add_argument("--version", action="version",
                   version=distsvc.commands.common.version_string())
    sub = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    for name, module in SUBCOMMANDS.items():
        module.add_parser(sub, name)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return distsvc.commands.common.guarded(lambda: int(SUBCOMMANDS[args.subcommand].run(args)))


if __name__ == "__main__":
    sys.exit(main())
