"""The SSH adapter: the one place distsvc talks SSH (through paramiko).

Honours ~/.ssh/config (HostName, Port, User, IdentityFile, ProxyCommand, ProxyJump,
UserKnownHostsFile, StrictHostKeyChecking=accept-new), the ssh-agent and known_hosts. Host
keys are always verified: an unknown key is refused unless the policy is "accept-new"; a
changed key is always refused.

paramiko is imported by this module only, and this module only by code that needs SSH, so
commands that do not connect anywhere do not pay its import time.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import getpass
import hashlib
import os
import random
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko

import distsvc.config
import distsvc.errors

# Measured against OpenSSH 9.2 (docs/benchmarks.md): 4 MiB streams fastest. A much larger
# window lets sshd queue megabytes it then copies over and over (16 MiB ran 3x slower).
WINDOW_SIZE = 4 * 1024 * 1024
MAX_PACKET_SIZE = 32768


@dataclasses.dataclass(frozen=True)
class Target:
    """Where and how to connect, after ~/.ssh/config is applied."""

    label: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    proxy_command: str | None
    proxy_jump: str | None
    known_hosts_files: tuple[str, ...]
    accept_new: bool


def _ssh_config() -> paramiko.SSHConfig:
    path = Path(os.path.expanduser("~/.ssh/config"))
    if path.is_file():
        return paramiko.SSHConfig.from_path(str(path))
    return paramiko.SSHConfig()


def resolve(host: distsvc.config.Host, host_key_policy: str,
            ssh_config: paramiko.SSHConfig | None = None) -> Target:
    """Apply ~/.ssh/config to a configured host; distsvc's own settings win."""
    options = (ssh_config or _ssh_config()).lookup(host.address or host.name)
    known = options.get("userknownhostsfile")
    known_files = tuple(os.path.expanduser(p) for p in known.split()) if known else (
        os.path.expanduser("~/.ssh/known_hosts"),)
    strict = str(options.get("stricthostkeychecking", "")).lower()
    proxy_command = options.get("proxycommand")
    proxy_jump = options.get("proxyjump")
    return Target(
        label=host.name,
        hostname=str(options.get("hostname", host.address or host.name)),
        port=host.port or int(options.get("port", 22)),
        user=host.user or str(options.get("user") or getpass.getuser()),
        identity_files=tuple(os.path.expanduser(p) for p in options.get("identityfile", [])),
        proxy_command=None if proxy_command in (None, "none") else str(proxy_command),
        proxy_jump=None if proxy_jump in (None, "none") else str(proxy_jump),
        known_hosts_files=known_files,
        # "no" and "off" would disable checking silently; distsvc treats them as accept-new,
        # which still refuses a key that changed.
        accept_new=host_key_policy == "accept-new" or strict in ("accept-new", "no", "off"),
    )


def _fingerprint(key: paramiko.PKey) -> str:
    """As OpenSSH shows it: "ssh-ed25519 SHA256:..." (PKey.fingerprint needs paramiko 3.2)."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def _known_hosts_name(target: Target) -> str:
    return target.hostname if target.port == 22 else f"[{target.hostname}]:{target.port}"


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    def __init__(self, target: Target) -> None:
        self.target = target

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        if not self.target.accept_new:
            t = self.target
            port = f"-p {t.port} " if t.port != 22 else ""
            raise distsvc.errors.HostKeyRefused(
                t.label,
                f"host key not known ({_fingerprint(key)}); verify it, then accept it with "
                f"`ssh {port}{t.user}@{t.hostname} true`, or use --accept-new "
                f"(host_key_policy = \"accept-new\")")
        path = Path(self.target.known_hosts_files[0])
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(path, "a", encoding="ascii") as out:
            out.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


def _open_socket(target: Target, timeout: float, jump: Connection | None) -> Any:
    if jump is not None:
        return jump.transport.open_channel(
            "direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0), timeout=timeout)
    if target.proxy_command:
        config = paramiko.SSHConfig.from_text(
            f"Host {target.label}\n  ProxyCommand {target.proxy_command}\n"
            f"  HostName {target.hostname}\n  Port {target.port}\n  User {target.user}")
        return paramiko.ProxyCommand(config.lookup(target.label)["proxycommand"])
    sock = socket.create_connection((target.hostname, target.port), timeout=timeout)
    # paramiko leaves Nagle on: small writes then wait for delayed ACKs (~40 ms a command).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # A host that vanishes (crash, cable) is noticed within ~60 s, not TCP's ~15 minutes.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    return sock


# OpenSSH's default MaxSessions: the sessions one connection carries before the server refuses
# the next. A server that refuses earlier teaches the pool its own limit.
SESSIONS_PER_CONNECTION = 10
OPEN_TIMEOUT = 15.0  # for a session and its start to be confirmed by the server


class Connection:
    """An authenticated SSH connection to one host, carrying up to `limit` sessions at once.

    A session is reserved (reserve()) before it is opened and released when its process is
    closed, so the count is exact however a command ends.
    """

    def __init__(self, target: Target, client: paramiko.SSHClient,
                 jump: Connection | None, limit: int = SESSIONS_PER_CONNECTION) -> None:
        self.target = target
        self.client = client
        self.jump = jump
        transport = client.get_transport()
        assert transport is not None
        self.transport: paramiko.Transport = transport
        self.limit = limit
        self.sessions = 0
        self.used = time.monotonic()
        self._lock = threading.Lock()

    def reserve(self) -> bool:
        """Take one session slot, if the connection is alive and has one free."""
        with self._lock:
            if self.sessions >= self.limit or not self.alive():
                return False
            self.sessions += 1
            self.used = time.monotonic()
            return True

    def release(self) -> None:
        with self._lock:
            self.sessions -= 1
            self.used = time.monotonic()
        self._forget_finished_channels()

    def _forget_finished_channels(self) -> None:
        """paramiko remembers every channel id a transport ever had (`channels_seen`), so a
        connection that lives for weeks would grow by one entry per session. A channel the
        server has closed (it left `_channels`) gets no more messages: its id can go."""
        transport = self.transport
        with transport.lock:
            live = transport._channels  # type: ignore[attr-defined]
            for chanid in [c for c in transport.channels_seen if live.get(c) is None]:
                del transport.channels_seen[chanid]

    def open(self, command: str, *, term: str | None = None, size: tuple[int, int] = (80, 24),
             timeout: float = OPEN_TIMEOUT, reserved: bool = False) -> RemoteProcess:
        """Start `command` on a session (`reserved`: one the caller took with reserve()); with
        `term`, on a pseudo-terminal of `size` (columns, rows). The slot is released when the
        process is closed, or here on failure.

        Raises SessionRefused when the server refused the session or the command's start
        (nothing ran: the caller may try another connection), HostUnreachable when the
        connection is dead or the host stopped answering before the command was sent (nothing
        ran), and StartUncertain when the command was sent but its start was never confirmed
        (it may be running: never retry it).
        """
        label = self.target.label
        if not reserved and not self.reserve():
            raise distsvc.errors.SessionRefused(
                label, f"all {self.limit} sessions of the connection are in use")
        channel = None
        expired = threading.Event()
        try:
            try:
                channel = self.transport.open_session(
                    window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE, timeout=timeout)
            except paramiko.ChannelException:
                # OpenSSH refuses a session beyond MaxSessions: learn its limit.
                self.limit = max(1, self.sessions - 1)
                raise distsvc.errors.SessionRefused(
                    label, f"refused a session beyond {self.limit} on one connection") from None
            except (paramiko.SSHException, EOFError, OSError):
                if self.alive():
                    raise distsvc.errors.HostUnreachable(
                        label, f"no session within {timeout:g} s (the host stopped answering)"
                    ) from None
                raise distsvc.errors.HostUnreachable(label, "connection lost") from None
            opened = channel

            def expire() -> None:  # paramiko waits for the server's replies without a bound
                expired.set()
                opened.close()

            timer = threading.Timer(timeout, expire)
            timer.daemon = True
            timer.start()
            try:
                if term is not None:
                    try:
                        channel.get_pty(term=term, width=size[0], height=size[1])
                    except (paramiko.SSHException, EOFError, OSError):
                        raise self._failed(expired, "a pseudo-terminal", timeout) from None
                try:
                    channel.exec_command(command)
                except (paramiko.SSHException, EOFError, OSError):
                    if expired.is_set() or not self.alive():
                        raise distsvc.errors.StartUncertain(
                            f"{label}: the connection failed while the command was starting; "
                            "it may have run, so it is not run again") from None
                    raise distsvc.errors.SessionRefused(
                        label, "refused to start the command") from None
            finally:
                timer.cancel()
                timer.join()
        except BaseException:
            if channel is not None:
                channel.close()
            self.release()
            raise
        return RemoteProcess(channel, self)

    def _failed(self, expired: threading.Event, what: str,
                timeout: float) -> distsvc.errors.HostUnreachable:
        label = self.target.label
        if expired.is_set():
            return distsvc.errors.HostUnreachable(
                label, f"no answer within {timeout:g} s (the host stopped answering)")
        if not self.alive():
            return distsvc.errors.HostUnreachable(label, "connection lost")
        return distsvc.errors.SessionRefused(label, f"refused {what}")

    def run(self, command: str, stdin: bytes = b"", timeout: float = 10.0
            ) -> tuple[int, bytes]:
        """Run to completion: (exit status or -1, stdout). Raises TimeoutError past `timeout`."""
        return run_to_end(self.open(command, timeout=timeout), stdin, timeout)

    def alive(self) -> bool:
        return self.transport.is_active()

    def close(self) -> None:
        self.client.close()
        sock = self.transport.sock
        if isinstance(sock, paramiko.ProxyCommand):
            # paramiko only sends SIGTERM: reap the proxy so it does not stay a zombie.
            with contextlib.suppress(Exception):
                sock.process.wait(2)
            if sock.process.poll() is None:
                sock.process.kill()
                sock.process.wait()
        if self.jump is not None:
            self.jump.close()


def run_to_end(process: RemoteProcess, stdin: bytes, timeout: float) -> tuple[int, bytes]:
    """Feed `stdin`, collect stdout until the command ends: (exit status or -1, stdout).

    Raises TimeoutError past `timeout`. Closes the process in every case.
    """
    deadline = time.monotonic() + timeout
    try:
        if stdin:
            process.channel.sendall(stdin)
        process.close_stdin()
        out = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer within {timeout:g} s")
            select.select([process.fileno()], [], [], remaining)
            out += process.read_stdout()
            process.read_stderr()
            if process.finished():
                return process.exit_status(), bytes(out)
    finally:
        process.close()


def _drain(ready: Callable[[], bool], receive: Callable[[int], bytes], limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit and ready():
        chunks.append(receive(limit - size))
        size += len(chunks[-1])
    return b"".join(chunks)


class RemoteProcess:
    """A command running on a channel; the relay in distsvc.actions drives it.

    close() must be called when done with it: it closes the channel (and the pipe behind
    fileno(), which paramiko only closes then) and gives the session slot back.
    """

    def __init__(self, channel: paramiko.Channel, connection: Connection) -> None:
        self.channel = channel
        self.connection = connection
        self._fileno = channel.fileno()
        self._closed = False
        self._close_lock = threading.Lock()

    def fileno(self) -> int:
        """Readable when output, end of output or the exit status arrives."""
        return self._fileno

    def read_stdout(self, limit: int = 1 << 20) -> bytes:
        """What has arrived on stdout, at most about `limit` bytes."""
        return _drain(self.channel.recv_ready, self.channel.recv, limit)

    def read_stderr(self, limit: int = 1 << 20) -> bytes:
        return _drain(self.channel.recv_stderr_ready, self.channel.recv_stderr, limit)

    def write(self, data: bytes) -> None:
        self.channel.sendall(data)

    def close_stdin(self) -> None:
        self.channel.shutdown_write()

    def resize(self, columns: int, rows: int) -> None:
        self.channel.resize_pty(width=columns, height=rows)

    def finished(self) -> bool:
        """All output read and the command ended (or the channel closed)."""
        # The end is checked before the buffers: output that arrives in between is then seen
        # as not drained, never lost.
        ended = self.channel.closed or (
            bool(self.channel.eof_received) and self.channel.exit_status_ready())
        return ended and not self.channel.recv_ready() and not self.channel.recv_stderr_ready()

    def exit_status(self) -> int:
        """The command's exit status; -1 if the channel closed without one."""
        if self.channel.exit_status_ready():
            return self.channel.recv_exit_status()
        return -1

    def connection_lost(self) -> bool:
        transport = self.channel.get_transport()
        return transport is None or not transport.is_active()

    def close(self) -> None:
        """Close the channel and give its session slot back (once, from any thread)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self.channel.close()
        self.connection.release()

    def abandon(self) -> None:
        """For a command that signals cannot reach: close its channel and, when nothing else
        runs on its connection, the connection too; the remote wrapper's watcher then ends
        the command's tree, as when a connection drops."""
        self.close()
        if self.connection.sessions == 0:
            self.connection.close()


def _explain(error: BaseException, target: Target, timeout: float, late: bool) -> str:
    if isinstance(error, paramiko.BadHostKeyException):
        return (f"host key CHANGED (now {_fingerprint(error.key)}); refusing to connect. If the "
                "change is expected, remove the old key: "
                f"ssh-keygen -R '{_known_hosts_name(target)}'")
    if isinstance(error, paramiko.AuthenticationException):
        return (f"authentication failed as {target.user} (no key in the ssh-agent or ~/.ssh "
                "was accepted)")
    if late or isinstance(error, (socket.timeout, TimeoutError)):
        # paramiko words a timeout in many ways ("Error reading SSH protocol banner", ...).
        return f"no answer within {timeout:g} s"
    return str(error) or type(error).__name__


def connect(target: Target, timeout: float, jump_policy: str = "strict") -> Connection:
    """Connect and authenticate within `timeout` seconds, or raise HostUnreachable."""
    jump: Connection | None = None
    client = paramiko.SSHClient()
    deadline = time.monotonic() + timeout
    try:
        if target.proxy_jump:
            first = target.proxy_jump.split(",")[0]
            parsed = distsvc.config.parse_host_spec(first)
            if parsed is None:
                raise distsvc.errors.HostUnreachable(target.label, f"bad ProxyJump {first!r}")
            jump = connect(resolve(parsed, jump_policy), timeout, jump_policy)
        sock = _open_socket(target, timeout, jump)
        for path in ("/etc/ssh/ssh_known_hosts", *target.known_hosts_files):
            if os.path.isfile(path):
                client.load_system_host_keys(path)
        client.set_missing_host_key_policy(_HostKeyPolicy(target))
        identities = [p for p in target.identity_files if os.path.exists(p)]
        client.connect(
            target.hostname, port=target.port, username=target.user, sock=sock,
            # paramiko takes a list too, which its type stubs do not say.
            key_filename=identities or None,  # type: ignore[arg-type]
            timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
            allow_agent=True, look_for_keys=True)
        return Connection(target, client, jump)
    except BaseException as error:
        client.close()
        if jump is not None:
            jump.close()
        if isinstance(error, distsvc.errors.HostUnreachable):
            raise
        late = time.monotonic() >= deadline
        if isinstance(error, paramiko.BadHostKeyException):
            raise distsvc.errors.HostKeyRefused(
                target.label, _explain(error, target, timeout, late)) from None
        if isinstance(error, (OSError, EOFError, paramiko.SSHException)):
            dropped = not late and any(isinstance(e, (EOFError, ConnectionResetError))
                                       for e in (error, error.__cause__, error.__context__))
            raise distsvc.errors.HostUnreachable(
                target.label, _explain(error, target, timeout, late), dropped) from None
        raise


def _connect_retrying_drops(target: Target, timeout: float) -> Connection:
    """connect(), tried again (up to 3 times, a fraction of a second apart, at random) when the
    server dropped the handshake: many clients connecting at once past sshd's MaxStartups."""
    for attempt in range(1, 4):
        try:
            return connect(target, timeout)
        except distsvc.errors.HostUnreachable as error:
            if not error.dropped or attempt == 3:
                raise
            time.sleep(random.uniform(0.1, 0.4) * attempt)
    raise AssertionError("unreachable")


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
        for _ in range(3):
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
        return run_to_end(process, stdin, max(0.05, timeout - (time.monotonic() - started)))


class Pool:
    """Authenticated connections kept open by host, so a command starts without a handshake.

    The client process keeps one for its lifetime (the probe's connection is reused for the
    command); the daemon keeps one for its lifetime (connections stay warm between commands).
    Handshakes to one host are made one at a time (sshd's MaxStartups drops concurrent
    unauthenticated connections at random past 10): those who wait share the new connection.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[Target, list[Connection]] = {}
        self._connecting: dict[Target, threading.Lock] = {}
        self._failed: dict[Target, tuple[float, distsvc.errors.HostUnreachable]] = {}
        self._limits: dict[Target, int] = {}

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
                connection = _connect_retrying_drops(target, timeout)
            except distsvc.errors.HostUnreachable as error:
                with self._lock:
                    self._failed[target] = (time.monotonic(), error)
                raise
            with self._lock:
                connection.limit = self._limits.get(target, SESSIONS_PER_CONNECTION)
                connection.reserve()
                self._connections.setdefault(target, []).append(connection)
                self._failed.pop(target, None)
            return connection

    def learn_limit(self, target: Target, limit: int) -> None:
        """The host refused a session beyond `limit` on one connection: new ones carry that."""
        with self._lock:
            self._limits[target] = min(limit, self._limits.get(target, limit))

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
        for connection in connections:
            connection.close()
