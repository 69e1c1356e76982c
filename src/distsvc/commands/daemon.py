"""`distsvc daemon`: the per-user daemon (started by distsvc.socket, or by a client)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
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
    directory = (Path(listener.getsockname()).parent if listener is not None
                 else distsvc.adapters.unix.claim_directory(os.environ))
    lock = distsvc.adapters.unix.take_daemon_lock(directory)
    if lock is None:
        log.info("another daemon is serving this user; exiting", directory=str(directory))
        return 0
    own_socket = None
    try:
        if listener is None:
            listener = distsvc.adapters.unix.listen(directory)
            own_socket = os.lstat(directory / distsvc.adapters.unix.SOCKET_NAME)
        daemon = distsvc.actions.serve.new_daemon(os.environ, args.config)
        stop = distsvc.actions.serve.Stop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: stop.set())
        distsvc.actions.serve.serve(listener, daemon, stop)
        return 0
    finally:
        path = directory / distsvc.adapters.unix.SOCKET_NAME
        with contextlib.suppress(OSError):
            now = os.lstat(path)
            # Only our own socket: by now another daemon (or systemd) may have bound the path.
            if own_socket is not None and (now.st_dev, now.st_ino) == (
                    own_socket.st_dev, own_socket.st_ino):
                os.unlink(path)
        os.close(lock)

