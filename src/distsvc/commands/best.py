"""`distsvc best`: print the least-loaded host's name (for scripts: ssh $(distsvc best) ...)."""

from __future__ import annotations

import argparse
import os
from typing import Any

import distsvc.commands.common
import distsvc.commands.output
import distsvc.errors


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="print the best host's name")
    p.add_argument("--json", action="store_true", help=distsvc.commands.output.HELP)
    distsvc.commands.common.add_config_options(p)


def run(args: argparse.Namespace) -> int:
    import distsvc.actions.client
    import distsvc.config

    config = distsvc.commands.common.load_config(args)
    if not config.hosts:
        raise distsvc.errors.CannotRun("no hosts configured")
    try:
        answer = distsvc.actions.client.query(
            {"type": "best", "config": distsvc.config.to_mapping(config)}, os.environ)
        host = answer["host"]
    except distsvc.actions.client.Unavailable as why:
        distsvc.actions.client.fall_back(os.environ, why)
        import distsvc.actions.placement
        import distsvc.adapters.ssh
        import distsvc.paths

        pool = distsvc.adapters.ssh.Pool()
        try:
            host = distsvc.actions.placement.choose(
                config, distsvc.paths.state_dir(os.environ), set(), lambda _: None, pool,
                job_pid=0).host.name
        finally:
            pool.close_all()
    if args.json:
        distsvc.commands.output.emit("best", {"host": host})
    else:
        print(host)
    return 0
