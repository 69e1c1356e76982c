"""The pool of connections by host, and Sessions: a session on any connection with room, a
new connection (one handshake at a time per host) when none has."""

from __future__ import annotations

import os
import random
import threading
import time

import distsvc.config
import distsvc.errors
from distsvc.adapters.ssh.channels import (
    OPEN_TIMEOUT,
    SESSIONS_PER_CONNECTION,
    Connection,
    RemoteProcess,
    run_to_end,
)
from distsvc.adapters.ssh.handshake import Target, agent_usable, connect, resolve


def _connect_retrying_drops(target: Target, timeout: float, agent_socket: str | None
                            ) -> Connection:
    """connect(), tried again (up to 3 times, a fraction of a second apart, at random) when the
    server dropped the handshake: many clients connecting at once past sshd's MaxStartups."""
    for attempt in range(1, 4):
        try:
            return connect(target, timeout, agent_socket)
        except distsvc.errors.HostUnreachable as error:
            if not error.dropped or attempt == 3:
                raise
            time.sleep(random.uniform(0.1, 0.4) * attempt)
    raise AssertionError("unreachable")


ATTEMPTS = 6  # connections a session is tried on before the host counts as refusing


class Sessions:
    """Sessions on one host over the pool's connections to it.

    A command, a probe or a signal delivery each take a session of their own: on a pooled
    connection with a free slot, else on a new connection (a host at its MaxSessions gets
    as many connections as its commands need).
    """

    def __init__(self, pool: Pool, target: Target, timeout: float) -> None:
        self.pool = pool
        self.target = target
        self.timeout = timeout  # for connecting

    @property
    def label(self) -> str:
        return self.target.label

    def open(self, command: str, *, term: str | None = None, size: tuple[int, int] = (80, 24),
             timeout: float = OPEN_TIMEOUT) -> RemoteProcess:
        """Start `command` (see Connection.open for what it raises)."""
        error: distsvc.errors.HostUnreachable | None = None
        # Refusals are cheap (nothing ran) and, while the pool learns a host's limit, many
        # commands arriving at once may meet one each: a few more tries than connections.
        for _ in range(ATTEMPTS):
            connection = self.pool.lease(self.target, self.timeout)
            try:
                return connection.open(command, term=term, size=size, timeout=timeout,
                                       reserved=True)
            except distsvc.errors.SessionRefused as refused:
                self.pool.learn_limit(self.target, connection.limit)
                error = refused  # the next lease finds a slot elsewhere, or connects anew
            except distsvc.errors.HostUnreachable as unreachable:
                if connection.alive():
                    raise  # alive but not answering: another connection would fare no better
                error = unreachable  # a pooled connection that died unnoticed: a fresh one
        assert error is not None
        raise error

    def run(self, command: str, stdin: bytes = b"", timeout: float = 10.0
            ) -> tuple[int, bytes]:
        """Run to completion: (exit status or -1, stdout). Raises TimeoutError past `timeout`,
        HostUnreachable when no session could be had (nothing ran)."""
        started = time.monotonic()
        process = self.open(command, timeout=timeout)
        try:
            return run_to_end(process, stdin, max(0.05, timeout - (time.monotonic() - started)))
        finally:
            if not self.pool.keep:
                self.pool.close_if_idle(process.connection)


class Pool:
    """Authenticated connections kept open by host, so a command starts without a handshake.

    The client process keeps one for its lifetime (the probe's connection is reused for the
    command); the daemon keeps one for its lifetime (connections stay warm between commands).
    Handshakes to one host are made one at a time (sshd's MaxStartups drops concurrent
    unauthenticated connections at random past 10): those who wait share the new connection.
    """

    def __init__(self, agent_socket: str | None = None, *, keep: bool = True) -> None:
        # keep=False: a connection closes once its run() is over and it carries nothing else.
        # For a process that makes one pass over many hosts (`distsvc scan`): it would hold
        # every connection to the end, each a paramiko thread and a fd (1,000 hosts would
        # meet the usual limit of 1,024 fds).
        self.keep = keep
        self._lock = threading.Lock()
        self._connections: dict[Target, list[Connection]] = {}
        self._connecting: dict[Target, threading.Lock] = {}
        self._failed: dict[Target, tuple[float, distsvc.errors.HostUnreachable]] = {}
        self._limits: dict[Target, int] = {}
        self._watcher: threading.Thread | None = None
        self._closed = threading.Event()
        # The ssh-agent new connections authenticate with: the one given, else this
        # process's own ($SSH_AUTH_SOCK, read here, never written).
        self._agent_socket = agent_socket or os.environ.get("SSH_AUTH_SOCK") or None

    def adopt_agent(self, path: str | None) -> None:
        """Authenticate new connections with a client's ssh-agent at `path` when ours is
        unset or gone: a daemon started by systemd may not know the user's agent, and one it
        adopted may have ended (an `ssh -A` session that closed). Instead of changing the
        process's environment, which every thread reads."""
        with self._lock:
            if agent_usable(path) and not agent_usable(self._agent_socket):
                self._agent_socket = path

    def _agent(self) -> str | None:
        with self._lock:
            return self._agent_socket

    def sessions(self, host: distsvc.config.Host, host_key_policy: str, timeout: float
                 ) -> Sessions:
        """Sessions on `host`; connections are made when a session needs one."""
        return Sessions(self, resolve(host, host_key_policy), timeout)

    def _reserve_pooled(self, target: Target) -> Connection | None:
        found = None
        with self._lock:
            connections = self._connections.setdefault(target, [])
            dead = [c for c in connections if not c.alive()]
            for connection in dead:
                connections.remove(connection)
            for connection in connections:
                if connection.reserve():
                    found = connection
                    break
        for gone in dead:
            gone.close()
        return found

    def lease(self, target: Target, timeout: float) -> Connection:
        """A connection to `target` with one session reserved for the caller.

        Raises HostUnreachable (HostKeyRefused) when connecting fails; callers that waited for
        that same attempt get its error at once instead of trying again one after another.
        """
        connection = self._reserve_pooled(target)
        if connection is not None:
            return connection
        waited_from = time.monotonic()
        with self._lock:
            connecting = self._connecting.setdefault(target, threading.Lock())
        with connecting:
            connection = self._reserve_pooled(target)
            if connection is not None:
                return connection
            with self._lock:
                failed = self._failed.get(target)
            if failed is not None and failed[0] >= waited_from:
                raise failed[1]
            try:
                connection = _connect_retrying_drops(target, timeout, self._agent())
            except distsvc.errors.HostUnreachable as error:
                with self._lock:
                    self._failed[target] = (time.monotonic(), error)
                raise
            with self._lock:
                connection.limit = self._limits.get(target, SESSIONS_PER_CONNECTION)
                connection.reserve()
                self._connections.setdefault(target, []).append(connection)
                self._failed.pop(target, None)
                if self._watcher is None:
                    self._closed.clear()
                    self._watcher = threading.Thread(target=self._watch, daemon=True,
                                                     name="ssh-watch")
                    self._watcher.start()
            return connection

    def _watch(self) -> None:
        """Asks busy connections whether their server still answers (Connection.check_answering)."""
        while not self._closed.wait(2.0):
            with self._lock:
                connections = [c for cs in self._connections.values() for c in cs]
            now = time.monotonic()
            for connection in connections:
                if connection.alive():
                    connection.check_answering(now)

    def learn_limit(self, target: Target, limit: int) -> None:
        """The host refused a session beyond `limit` on one connection: every connection to it
        carries no more from now on."""
        with self._lock:
            limit = self._limits[target] = min(limit, self._limits.get(target, limit))
            for connection in self._connections.get(target, []):
                connection.limit = min(connection.limit, limit)

    def close_if_idle(self, connection: Connection) -> None:
        """Close `connection` if it carries no session."""
        with self._lock:
            connections = self._connections.get(connection.target, [])
            if connection.sessions or connection not in connections:
                return
            connections.remove(connection)
        connection.close()

    def close_idle(self, idle_for: float) -> int:
        """Close connections that carried no session for `idle_for` seconds."""
        now = time.monotonic()
        with self._lock:
            closing = []
            for connections in self._connections.values():
                for connection in list(connections):
                    if connection.sessions == 0 and now - connection.used > idle_for:
                        connections.remove(connection)
                        closing.append(connection)
        for connection in closing:
            connection.close()
        return len(closing)

    def counts(self) -> dict[str, int]:
        """Live connections by host label."""
        with self._lock:
            return {t.label: n for t, cs in self._connections.items()
                    if (n := sum(1 for c in cs if c.alive()))}

    def size(self) -> int:
        return sum(self.counts().values())

    def close_all(self) -> None:
        with self._lock:
            connections = [c for cs in self._connections.values() for c in cs]
            self._connections.clear()
            watcher, self._watcher = self._watcher, None
        self._closed.set()
        if watcher is not None:
            watcher.join()
        for connection in connections:
            connection.close()
