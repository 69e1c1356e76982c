"""The daemon: accepts connections, checks each peer, dispatches one request per connection.

`serve()` is a plain function over a listening socket, so tests run a daemon in-process.
Request handlers live in distsvc.actions.handlers, one per request type, in a table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import select
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import distsvc
import distsvc.adapters.ssh
import distsvc.adapters.systemd
import distsvc.adapters.unix
import distsvc.config
import distsvc.errors
import distsvc.log
import distsvc.paths
import distsvc.protocol

REQUEST_TIMEOUT = 10.0  # a client has this long to send its request
MAX_CONNECTIONS = 256  # beyond this, new connections are closed at once
CONNECTION_IDLE = 600.0  # SSH connections unused this long are closed


@dataclasses.dataclass
class Daemon:
    """What the daemon keeps between requests."""

    environ: dict[str, str]
    config_path: Path | None
    config: distsvc.config.Config
    config_mtime: float | None
    pool: distsvc.adapters.ssh.Pool
    state_dir: Path
    started: float = dataclasses.field(default_factory=time.monotonic)
    last_activity: float = dataclasses.field(default_factory=time.monotonic)
    connections: int = 0
    jobs: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    measuring: set[str] = dataclasses.field(default_factory=set)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    job_ids: itertools.count[int] = dataclasses.field(default_factory=lambda: itertools.count(1))

    def busy(self) -> bool:
        with self.lock:
            return self.connections > 0 or bool(self.jobs)

    def touch(self) -> None:
        with self.lock:
            self.last_activity = time.monotonic()

    def reload_config_if_changed(self) -> None:
        path = self.config_path or distsvc.paths.config_file(self.environ)
        try:
            mtime: float | None = path.stat().st_mtime
        except OSError:
            mtime = None
        if mtime == self.config_mtime:
            return
        try:
            self.config = distsvc.config.load(self.config_path, self.environ)
            distsvc.log.get().info("configuration reloaded", path=str(path),
                                   hosts=len(self.config.hosts))
        except distsvc.errors.ConfigError as error:
            distsvc.log.get().error("configuration invalid, keeping the previous one",
                                    error=error.message)
        self.config_mtime = mtime


@dataclasses.dataclass
class Peer:
    """One client connection."""

    sock: socket.socket
    reader: distsvc.adapters.unix.Reader
    pid: int
    uid: int

    def send(self, message: dict[str, Any]) -> None:
        distsvc.adapters.unix.send(self.sock, message)


def new_daemon(environ: Mapping[str, str], config_path: Path | None) -> Daemon:
    config = distsvc.config.load(config_path, environ)
    path = config_path or distsvc.paths.config_file(environ)
    try:
        mtime: float | None = path.stat().st_mtime
    except OSError:
        mtime = None
    return Daemon(environ=dict(environ), config_path=config_path, config=config,
                  config_mtime=mtime, pool=distsvc.adapters.ssh.Pool(),
                  state_dir=distsvc.paths.state_dir(environ))


def _refuse(sock: socket.socket, text: str) -> None:
    """Send a one-line error and close gracefully: unread input is drained first, or the
    kernel would answer it with a reset that destroys the error before the peer reads it."""
    with contextlib.suppress(OSError):
        distsvc.adapters.unix.send(sock, distsvc.protocol.error(text, 2))
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.5)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and sock.recv(65536):
            pass


def handle_connection(daemon: Daemon, sock: socket.socket) -> None:
    import distsvc.actions.handlers

    log = distsvc.log.get()
    reader = distsvc.adapters.unix.Reader(sock)
    user_request = True
    try:
        pid, uid = distsvc.adapters.unix.peer_credentials(sock)
        if uid != os.getuid():
            log.warning("refused a connection from another user", peer_uid=uid, peer_pid=pid)
            _refuse(sock, f"permission denied: this daemon serves uid {os.getuid()} only")
            return
        sock.settimeout(REQUEST_TIMEOUT)
        try:
            request = reader.receive()
            if request is None:
                return
            kind = distsvc.protocol.request_type(request)
        except distsvc.protocol.ProtocolError as error:
            log.warning("bad request", peer_pid=pid, error=str(error))
            _refuse(sock, f"bad request: {error}")
            return
        sock.settimeout(None)
        # The scan timer's passes are not the user's activity: they must not keep an idle
        # daemon alive.
        user_request = kind != "scan"
        daemon.reload_config_if_changed()
        peer = Peer(sock, reader, pid, uid)
        try:
            response = distsvc.actions.handlers.HANDLERS[kind](daemon, request, peer)
        except distsvc.errors.DistsvcError as error:
            response = distsvc.protocol.error(error.message, error.exit_status)
        except distsvc.protocol.ProtocolError as error:
            response = distsvc.protocol.error(f"bad request: {error}", 2)
        except Exception as error:  # one request failing must not take the daemon down
            log.exception("request failed", request=kind, peer_pid=pid)
            response = distsvc.protocol.error(f"internal error: {error!r}", 255)
        if response is not None:
            with contextlib.suppress(OSError):
                peer.send(response)
    except OSError as error:
        log.info("connection ended", error=str(error))
    finally:
        reader.close_fds()
        sock.close()
        with daemon.lock:
            daemon.connections -= 1
            if user_request:
                daemon.last_activity = time.monotonic()


def status_line(daemon: Daemon) -> str:
    with daemon.lock:
        jobs = len(daemon.jobs)
    return (f"serving; {len(daemon.config.hosts)} hosts configured, "
            f"{daemon.pool.size()} connections, {jobs} jobs")


class Stop:
    """Asks serve() to return; safe to call from a signal handler. Wakes it at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def set(self) -> None:
        self.event.set()
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.wake_w, b"\0")

    def is_set(self) -> bool:
        return self.event.is_set()


def serve(listener: socket.socket, daemon: Daemon, stop: Stop) -> None:
    """Serve until `stop` is set or nothing happened for config.daemon_idle_exit seconds."""
    log = distsvc.log.get()
    listener.setblocking(False)
    watchdog = distsvc.adapters.systemd.watchdog_interval()
    last_ping = 0.0
    distsvc.adapters.systemd.notify(READY=1, STATUS=status_line(daemon))
    log.info("daemon ready", version=distsvc.__version__, pid=os.getpid(),
             hosts=len(daemon.config.hosts))
    while not stop.is_set():
        now = time.monotonic()
        if watchdog is not None and now - last_ping >= watchdog:
            # Pinged from the accept loop: a hung loop stops the pings and systemd restarts us.
            distsvc.adapters.systemd.notify(WATCHDOG=1, STATUS=status_line(daemon))
            last_ping = now
        with daemon.lock:
            idle_for = now - daemon.last_activity
        # Checked on every turn: requests that are not the user's (scan passes) keep the loop
        # turning without counting as activity.
        if not daemon.busy() and idle_for > daemon.config.daemon_idle_exit:
            log.info("exiting after being idle", idle_seconds=round(idle_for))
            break
        # Wakes for a connection, a stop, or each second for the watchdog and idle checks.
        readable, _, _ = select.select([listener.fileno(), stop.wake_r], [], [], 1.0)
        if listener.fileno() not in readable or stop.is_set():
            daemon.pool.close_idle(CONNECTION_IDLE)
            continue
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            continue  # another process took it (or it went away)
        except OSError as error:
            log.error("accept failed", error=str(error))
            time.sleep(0.1)
            continue
        sock.setblocking(True)
        with daemon.lock:
            if daemon.connections >= MAX_CONNECTIONS:
                sock.close()
                continue
            daemon.connections += 1
        threading.Thread(target=handle_connection, args=(daemon, sock), daemon=True,
                         name="connection").start()
    distsvc.adapters.systemd.notify(STOPPING=1)
    daemon.pool.close_all()
