"""`distsvc-shell`: an interactive login shell on the best host, in the current directory."""

from __future__ import annotations

import os
import sys

import distsvc.actions.run
import distsvc.commands.common
import distsvc.commands.parsing
import distsvc.remote


def parser() -> distsvc.commands.parsing.Parser:
    """distsvc-shell's arguments (the man page and completion are generated from it too)."""
    p = distsvc.commands.parsing.Parser(
        prog="distsvc-shell",
        description="Open your login shell on the least-loaded host, in the current directory.")
    p.add_argument("-w", "--workdir", metavar="DIR", help="directory to start in")
    p.add_argument("-q", "--quiet", action="store_true", help="no notices on stderr")
    p.add_argument("--version", action="version",
                   version=distsvc.commands.common.version_string())
    distsvc.commands.common.add_config_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the program
        distsvc.commands.common.standard_fds_open()
    args = parser().parse_args(argv)

    def body() -> int:
        config = distsvc.commands.common.load_config(args)
        options = distsvc.actions.run.Options(workdir=args.workdir, tty=True, quiet=args.quiet)
        if not config.hosts:
            return distsvc.actions.run.run_locally(
                [os.environ.get("SHELL") or "/bin/sh", "-l"], options, os.environ)
        return distsvc.actions.run.run(
            distsvc.remote.login_shell_argv(), options, config, os.environ)

    return distsvc.commands.common.guarded(body)


if __name__ == "__main__":
    sys.exit(main())
