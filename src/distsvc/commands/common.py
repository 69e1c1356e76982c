"""What every command shares: config options, error reporting, exit statuses."""

from __future__ import annotations

import os
import sys

import distsvc
import distsvc.errors

TYPE_CHECKING = False  # light at import: `guarded` serves distsvc-run's fast path
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

    import distsvc.config


def standard_fds_open() -> None:
    """/dev/null on whichever of descriptors 0-2 the caller closed (`distsvc-run cmd >&-`),
    as OpenSSH's client does: else the next descriptor opened, the daemon's socket or an SSH
    connection, would be taken for the command's stdin, stdout or stderr and carried to it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # the lowest free descriptor: fd itself unless a lower one is free
                os.dup2(null, fd)
                os.close(null)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    from pathlib import Path

    parser.add_argument("--config", metavar="FILE", type=Path,
                        help="configuration file (default: $XDG_CONFIG_HOME/distsvc/config.toml)")
    parser.add_argument("--accept-new", action="store_true",
                        help="accept and remember host keys not seen before (never changed ones)")


def load_config(args: argparse.Namespace | Any) -> distsvc.config.Config:
    """The configuration named by the `config` and `accept_new` attributes of `args`."""
    import dataclasses

    import distsvc.config

    config = distsvc.config.load(args.config, os.environ)
    if args.accept_new:
        config = dataclasses.replace(config, host_key_policy="accept-new")
    return config


def guarded(body: Callable[[], int]) -> int:
    """Run a command body: user errors become one line on stderr and their exit status."""
    try:
        return body()
    except distsvc.errors.DistsvcError as error:
        print(f"distsvc: {error.message}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Our output was closed by its reader: behave as if SIGPIPE had ended us.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def version_string() -> str:
    return f"distsvc {distsvc.__version__}"
