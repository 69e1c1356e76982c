"""`distsvc config check`: validate the configuration and print the effective one."""

from __future__ import annotations

import argparse
import json
from typing import Any

import distsvc.commands.common
import distsvc.commands.output
import distsvc.config


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="check the configuration")
    actions = p.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate and print the effective configuration")
    check.add_argument("--json", action="store_true", help=distsvc.commands.output.HELP)
    distsvc.commands.common.add_config_options(check)


def _toml_value(value: Any) -> str:
    # JSON strings, numbers and arrays of strings are valid TOML.
    return json.dumps(value)


def render(config: distsvc.config.Config) -> str:
    data = distsvc.config.to_mapping(config)
    lines = [f"# effective configuration (from {data.pop('source')})"]
    hosts = data.pop("hosts")
    env = data.pop("env")
    jobs = data.pop("jobs")
    all_jobs = jobs.pop("all")
    lines += [f"{key} = {_toml_value(value)}" for key, value in data.items()]
    lines += ["", "[env]"] + [f"{k} = {_toml_value(v)}" for k, v in env.items()]
    lines += ["", "[jobs]"] + [f"{k} = {_toml_value(v)}" for k, v in jobs.items()]
    if all_jobs:
        lines += ["", "[jobs.all]"] + [f"{k} = {_toml_value(v)}" for k, v in all_jobs.items()]
    for host in hosts:
        lines += ["", "[[hosts]]"] + [f"{k} = {_toml_value(v)}" for k, v in host.items()]
    if not hosts:
        lines += ["", "# no hosts: commands run on this machine"]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    config = distsvc.commands.common.load_config(args)
    if args.json:
        data = distsvc.config.to_mapping(config)
        distsvc.commands.output.emit("config check", {"source": data.pop("source"),
                                                      "config": data})
    else:
        print(render(config), end="")
    return 0
