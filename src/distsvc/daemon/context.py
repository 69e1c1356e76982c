"""What the daemon keeps: its state between requests (Daemon) and one client connection (Peer).

Shared by the accept loop (serve.py) and the request handlers (handlers.py), which import
this module and never each other's.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import distsvc
import distsvc.actions.relay
import distsvc.adapters.ssh
import distsvc.adapters.unix
import distsvc.config
import distsvc.daemon.book
import distsvc.daemon.hoststate
import distsvc.errors
import distsvc.log
import distsvc.paths
import distsvc.protocol


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
    planned_at: float = -math.inf  # when a request last looked for a host to measure
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    job_ids: itertools.count[int] = dataclasses.field(default_factory=lambda: itertools.count(1))
    runs: set[Peer] = dataclasses.field(default_factory=set)  # `run` requests in progress
    stopping: bool = False  # a stop is ending the running commands: new ones do not start
    retiring: bool = False  # a client of another installation came: exit once not busy
    # Wakes the accept loop (serve() sets it): the last connection ended, it may exit now.
    wake: Callable[[], None] = lambda: None
    identity: str = dataclasses.field(default_factory=lambda: distsvc.identity())  # at start
    # Its own files' newest mtime at start, and when it last looked again (serve.py).
    source_stamp: int = dataclasses.field(default_factory=lambda: distsvc.source_stamp())
    source_checked: float = dataclasses.field(default_factory=time.monotonic)
    book: distsvc.daemon.book.Book = dataclasses.field(
        default_factory=lambda: distsvc.daemon.book.Book({}))  # the jobs (new_daemon's environ)
    # The host state in memory, serving distsvc.state.store(state_dir) while serve() runs.
    hoststate: distsvc.daemon.hoststate.MemoryStore = dataclasses.field(init=False)
    _config_file: str | None = None  # config_path or the environment's, once looked up

    def __post_init__(self) -> None:
        self.hoststate = distsvc.daemon.hoststate.MemoryStore(self.state_dir)

    def busy(self) -> bool:
        """Serving a request, or carrying a command."""
        with self.lock:
            return self.connections > 0 or bool(self.jobs)

    def watching_jobs(self) -> bool:
        """Jobs run whose end it should record: no idle exit (a retiring daemon may go: the
        next one records them)."""
        return self.book.running_count() > 0

    def touch(self) -> None:
        with self.lock:
            self.last_activity = time.monotonic()

    def _config_mtime_now(self) -> float | None:
        """One stat, of a path found once (finding it costs as much again)."""
        if self._config_file is None:
            self._config_file = str(self.config_path or distsvc.paths.config_file(self.environ))
        try:
            return os.stat(self._config_file).st_mtime
        except OSError:
            return None

    def config_changed(self) -> bool:
        """Whether the configuration file changed since it was loaded (one stat)."""
        return self._config_mtime_now() != self.config_mtime

    def reload_config_if_changed(self) -> None:
        """Load the configuration again if its file changed (one stat per request)."""
        mtime = self._config_mtime_now()
        if mtime == self.config_mtime:
            return
        try:
            self.config = distsvc.config.load(self.config_path, self.environ)
            distsvc.log.get().info("configuration reloaded", path=self._config_file,
                                   hosts=len(self.config.hosts))
        except distsvc.errors.ConfigError as error:
            distsvc.log.get().error("configuration invalid, keeping the previous one",
                                    error=error.message)
        self.config_mtime = mtime


@dataclasses.dataclass(eq=False)
class Peer:
    """One client connection.

    Messages to it are sent under `send_lock`: the handler's (notices, the exit status) and
    the accept loop's heartbeats never interleave, and none is sent once it is closed. For a
    `run`, `events` (set by its handler) is how a stop ends its command.
    """

    sock: socket.socket
    reader: distsvc.adapters.unix.Reader
    pid: int
    uid: int
    heartbeats: bool = False  # the client asked for them (older clients would not know them)
    what: str = "the command"  # a `run`'s command line, for messages
    host: str | None = None  # where its command runs, once it started
    events: distsvc.actions.relay.EventQueue | None = None
    stopped: bool = False  # a stop of the daemon ended (or prevented) its command
    closed: bool = False
    send_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    state_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def send(self, message: dict[str, Any]) -> None:
        with self.send_lock:
            if self.closed:
                raise OSError(errno.EBADF, "the connection is closed")
            distsvc.adapters.unix.send(self.sock, message)

    def send_if_writable(self, message: dict[str, Any]) -> None:
        """Send a small message without ever blocking (the accept loop's heartbeats): skipped
        while another send is under way or the client does not read what it was sent."""
        if not self.send_lock.acquire(blocking=False):
            return
        try:
            if not self.closed and distsvc.adapters.unix.writable(self.sock):
                distsvc.adapters.unix.send(self.sock, message)
        except OSError:
            pass  # the handler finds out, on its own next send or read
        finally:
            self.send_lock.release()

    def attach(self, events: distsvc.actions.relay.EventQueue) -> None:
        """The run's event queue, from its handler; a stop already under way ends it at once."""
        with self.state_lock:
            self.events = events
            if self.stopped:
                events.add(signal.SIGTERM)

    def stop_command(self) -> None:
        """End its command as SIGTERM from its user would (the remote tree), from a stop."""
        with self.state_lock:
            self.stopped = True
            if self.events is not None:
                self.events.add(signal.SIGTERM)

    def close(self) -> None:
        with self.send_lock:
            self.closed = True
            self.sock.close()


def describe(request: dict[str, Any]) -> str:
    """A `run` request's command line, short, for messages."""
    argv = request.get("argv")
    if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        return distsvc.protocol.describe_command(argv)
    return "the command"


def stopped_message(peer: Peer, ended: bool = True) -> str:
    """What the client of a command a stop ended is told (one line). Not `ended`: its end
    was not seen in time, and the host ends it when the daemon's connection closes."""
    if peer.host is None:
        return f"the daemon was stopped (restart?) before {peer.what} started; it did not run"
    return (f"the daemon was stopped (restart?) while {peer.what} ran on {peer.host}; "
            + ("the command was ended there" if ended else
               "the command is ended there as the daemon's connection closes"))


def new_daemon(environ: Mapping[str, str], config_path: Path | None) -> Daemon:
    try:
        config = distsvc.config.load(config_path, environ)
    except distsvc.errors.ConfigError as error:
        # Every request carries its client's configuration: the daemon's own only sets its
        # idle exit. A daemon that refused to start would leave every command in-process.
        distsvc.log.get().error("configuration invalid, using the defaults", error=error.message)
        config = distsvc.config.load(Path(os.devnull), {})
    path = config_path or distsvc.paths.config_file(environ)
    try:
        mtime: float | None = path.stat().st_mtime
    except OSError:
        mtime = None
    pool = distsvc.adapters.ssh.Pool()
    book = distsvc.daemon.book.Book(environ)
    book.pool = pool  # jobs on hosts go over the daemon's own warm connections
    book.configure(config)
    return Daemon(environ=dict(environ), config_path=config_path, config=config,
                  config_mtime=mtime, pool=pool, state_dir=distsvc.paths.state_dir(environ),
                  book=book)


PAGE_KIB = os.sysconf("SC_PAGESIZE") // 1024


def rss_kib() -> int | None:
    """This process's resident memory (VmRSS, KiB): the second figure of /proc/self/statm,
    in pages (the same count as status's VmRSS, for half the reading: `status` asks it)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_KIB
    except (OSError, ValueError, IndexError):
        return None
