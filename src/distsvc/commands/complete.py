"""`distsvc complete hosts|jobs`: the names the shell completion scripts offer, one a line.

The generated scripts in share/bash-completion and share/zsh (scripts/gen-docs.py) call this on
a Tab after `--host`, `job list --host`, `--after` and a job verb's ID. So it is hidden (added
without help: neither --help, the man page nor the completion lists it), and cheap and quiet:
it reads the configuration (the file and DISTSVC_HOSTS) or lists the job store's directory,
nothing else. It never asks or starts the daemon, never opens SSH, and prints no error: a
configuration that does not load, or no job store yet, offers nothing (exit 0), since a Tab
that printed a message would write it into the user's command line.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

WHAT = ("hosts", "jobs")


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, description="names for shell completion, one a line")
    p.add_argument("what", choices=WHAT)
    p.add_argument("--config", metavar="FILE", type=Path)


def host_names(config_file: Path | None, environ: Mapping[str, str]) -> list[str]:
    """The configured hosts' names, in the configuration's order; none if it does not load."""
    import distsvc.config
    import distsvc.errors

    try:
        return [host.name for host in distsvc.config.load(config_file, environ).hosts]
    except (distsvc.errors.DistsvcError, OSError, ValueError):
        return []


def job_ids(environ: Mapping[str, str]) -> list[str]:
    """The IDs in the job store, newest first (the daemon keeps every job's record there,
    local or on a host); none if there is no store or it cannot be read."""
    import distsvc.jobs.store
    import distsvc.paths

    try:
        return distsvc.jobs.store.ids(distsvc.paths.jobs_dir(environ))
    except OSError:
        return []


def run(args: argparse.Namespace) -> int:
    names = host_names(args.config, os.environ) if args.what == "hosts" else job_ids(os.environ)
    for name in names:
        if name.isprintable() and name.strip() and name == name.split()[0]:
            print(name)  # one word a line: a name with a space would be two to the shell
    return 0
