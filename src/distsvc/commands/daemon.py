"""`distsvc daemon`: the per-user daemon (started by distsvc.socket, or by a client)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Any


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="run the daemon (normally started by distsvc.socket)",
                       description="Serve best-host queries and run commands over warm SSH "
                       "connections. Takes its socket from systemd, or binds it itself.")
    p.add_argument("--config", metavar="FILE", type=Path,
                   help="configuration file (default: $XDG_CONFIG_HOME/distsvc/config.toml)")
    p.add_argument("--log-level", default=None, help="debug, info (default), warning")


def run(args: argparse.Namespace) -> int:
    import distsvc.actions.serve
    import distsvc.adapters.systemd
    import distsvc.adapters.unix
    import distsvc.log

    distsvc.log.configure(args.log_level or os.environ.get("DISTSVC_LOG") or "info")
    log = distsvc.log.get()
    listener = distsvc.adapters.systemd.listening_socket()
    bound_here = listener is None
    directory = (Path(listener.getsockname()).parent if listener is not None
                 else distsvc.adapters.unix.claim_directory(os.environ))
    lock = distsvc.actions.serve.take_lock(directory)
    if lock is None:
        log.info("another daemon is serving this user; exiting", directory=str(directory))
        return 0
    try:
        if listener is None:
            listener = distsvc.adapters.unix.listen(directory)
        daemon = distsvc.actions.serve.new_daemon(os.environ, args.config)
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: stop.set())
        distsvc.actions.serve.serve(listener, daemon, stop)
        return 0
    finally:
        if bound_here and listener is not None:
            with contextlib.suppress(OSError):
                os.unlink(directory / distsvc.adapters.unix.SOCKET_NAME)
        os.close(lock)

