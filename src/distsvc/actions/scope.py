"""`distsvc-run --memory 1G --cpu 200% CMD` with no hosts: CMD here, in a transient scope.

A scope wraps our own child, so the terminal, stdin and signals stay exactly as for any
local command (adapters/local.py); the scope carries the limits. The child is made to wait
until the scope holds it, so no instruction of CMD runs outside its limits.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping
from typing import Any

import distsvc.actions.run
import distsvc.adapters.local
import distsvc.jobs.limits
import distsvc.jobs.local
import distsvc.protocol


def run(argv: list[str], options: distsvc.actions.run.Options, limits_json: dict[str, Any],
        best_effort: bool, environ: Mapping[str, str]) -> int:
    import distsvc.adapters.systemd.units as units

    limits = distsvc.jobs.limits.from_json(limits_json)
    cwd = options.workdir or distsvc.actions.run.current_directory(environ)
    distsvc.jobs.local.check_command(argv, cwd, environ)
    manager = units.Manager()
    try:
        not_enforced = distsvc.jobs.local.check_limits(
            limits, manager.delegated_controllers(), best_effort)
        if not_enforced and not options.quiet:
            print(f"distsvc: not enforced here: {', '.join(not_enforced)}", file=sys.stderr)
        name = f"distsvc-run-{os.getpid()}-{secrets.token_hex(3)}.scope"
        properties = distsvc.jobs.limits.properties(limits, cwd)

        def into_scope(pid: int) -> None:
            manager.start_scope(name, [pid], properties,
                                f"distsvc-run: {distsvc.protocol.describe_command(argv)}")

        return distsvc.adapters.local.run(argv, cwd, dict(environ), gate=into_scope)
    finally:
        manager.close()
