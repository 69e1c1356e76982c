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
    p.add_argument("--log-file", metavar="FILE", type=Path,
                   help="the file stderr goes to, kept small by rotating it (a client that "
                   "starts a daemon passes its log in the state directory)")


def run(args: argparse.Namespace) -> int:
    import distsvc.adapters.memory
    import distsvc.adapters.systemd
    import distsvc.errors
    import distsvc.log

    distsvc.adapters.memory.one_arena()  # before any thread: see its docstring
    distsvc.log.configure(args.log_level or os.environ.get("DISTSVC_LOG") or "info",
                          args.log_file)
    log = distsvc.log.get()
    if (distsvc.adapters.systemd.under_systemd(os.environ)
            and not distsvc.adapters.systemd.journal_available()):
        log.warning("systemd-python is not installed: logging plain lines to the journal "
                    "(pip install 'distsvc[systemd]' for structured fields)")
    try:
        return _serve(args)
    except (OSError, distsvc.errors.DistsvcError) as error:
        # One line where the user looks (the journal, or the log `distsvc status` reads).
        text = error.message if isinstance(error, distsvc.errors.DistsvcError) else str(error)
        log.error(f"daemon cannot start: {text}")
        return 1


def _serve(args: argparse.Namespace) -> int:
    import distsvc.adapters.systemd
    import distsvc.adapters.unix
    import distsvc.daemon.context
    import distsvc.daemon.serve
    import distsvc.log

    log = distsvc.log.get()
    problem = distsvc.adapters.unix.runtime_dir_problem(os.environ)
    listener = distsvc.adapters.systemd.listening_socket()
    if listener is not None and problem:
        log.warning(f"clients will not use the socket systemd passed: {problem}; they use "
                    "/tmp/distsvc-USER-N instead")
    elif problem:
        log.warning(f"{problem}: serving in /tmp/distsvc-USER-N instead")
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
        daemon = distsvc.daemon.context.new_daemon(os.environ, args.config)
        stop = distsvc.daemon.serve.Stop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: stop.set())
        distsvc.daemon.serve.serve(listener, daemon, stop)
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
