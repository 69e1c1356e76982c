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
import dataclasses
import getpass
import hashlib
import os
import select
import socket
import threading
import time
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


class Connection:
    """An authenticated SSH connection to one host."""

    def __init__(self, target: Target, client: paramiko.SSHClient,
                 jump: Connection | None) -> None:
        self.target = target
        self.client = client
        self.jump = jump
        transport = client.get_transport()
        assert transport is not None
        self.transport: paramiko.Transport = transport
        self._channels: list[paramiko.Channel] = []

    def open(self, command: str, *, term: str | None = None, size: tuple[int, int] = (80, 24),
             timeout: float = 15.0) -> RemoteProcess:
        """Start `command`; with `term`, on a pseudo-terminal of `size` (columns, rows).

        Raises HostUnreachable when no session can be started (e.g. a pooled connection
        whose server went away): nothing ran, so the caller may try elsewhere.
        """
        try:
            channel = self.transport.open_session(
                window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE, timeout=timeout)
            if term is not None:
                channel.get_pty(term=term, width=size[0], height=size[1])
            channel.exec_command(command)
            self._channels.append(channel)
        except (paramiko.SSHException, EOFError, OSError) as error:
            raise distsvc.errors.HostUnreachable(
                self.target.label, f"could not start a session: {error or type(error).__name__}"
            ) from None
        return RemoteProcess(channel)

    def run(self, command: str, stdin: bytes = b"", timeout: float = 10.0) -> tuple[int, bytes]:
        """Run to completion: (exit status or -1, stdout). Raises TimeoutError past `timeout`."""
        deadline = time.monotonic() + timeout
        process = self.open(command, timeout=timeout)
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
            process.channel.close()

    def alive(self) -> bool:
        return self.transport.is_active()

    def busy(self) -> bool:
        """Whether a command started with open() is still running on this connection."""
        self._channels = [c for c in self._channels if not c.closed]
        return bool(self._channels)

    def close(self) -> None:
        self.client.close()
        if self.jump is not None:
            self.jump.close()


class RemoteProcess:
    """A command running on a channel; the relay in distsvc.actions drives it."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self._fileno = channel.fileno()

    def fileno(self) -> int:
        """Readable when output, end of output or the exit status arrives."""
        return self._fileno

    def read_stdout(self) -> bytes:
        chunks = []
        while self.channel.recv_ready():
            chunks.append(self.channel.recv(1 << 20))
        return b"".join(chunks)

    def read_stderr(self) -> bytes:
        chunks = []
        while self.channel.recv_stderr_ready():
            chunks.append(self.channel.recv_stderr(1 << 20))
        return b"".join(chunks)

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
            raise distsvc.errors.HostUnreachable(
                target.label, _explain(error, target, timeout, late)) from None
        raise


class Pool:
    """Authenticated connections kept open by host, so a command starts without a handshake.

    The client process keeps one for its lifetime (the probe's connection is reused for the
    command); the daemon keeps one for its lifetime (connections stay warm between commands).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[Target, Connection] = {}
        self._used: dict[Target, float] = {}

    def get(self, host: distsvc.config.Host, host_key_policy: str, timeout: float
            ) -> Connection:
        """A live connection to `host`: the pooled one, or a new one. Raises HostUnreachable."""
        target = resolve(host, host_key_policy)
        with self._lock:
            connection = self._connections.get(target)
            if connection is not None and not connection.alive():
                del self._connections[target]
                connection.close()
                connection = None
        if connection is None:
            connection = connect(target, timeout)
            with self._lock:
                raced = self._connections.get(target)
                if raced is not None and raced.alive():
                    connection.close()
                    connection = raced
                else:
                    self._connections[target] = connection
        with self._lock:
            self._used[target] = time.monotonic()
        return connection

    def unpooled(self, host: distsvc.config.Host, host_key_policy: str, timeout: float
                 ) -> Connection:
        """A connection of its own (the caller closes it), for when the host refuses one more
        session on the pooled connection (OpenSSH's MaxSessions is 10 by default)."""
        return connect(resolve(host, host_key_policy), timeout)

    def discard(self, connection: Connection) -> None:
        """Drop a connection that failed, so the next get() connects afresh. Only for a
        connection that is dead or broken: the other commands on it end with it."""
        with self._lock:
            if self._connections.get(connection.target) is connection:
                del self._connections[connection.target]
        connection.close()

    def close_idle(self, idle_for: float) -> int:
        now = time.monotonic()
        with self._lock:
            idle = [t for t, used in self._used.items() if now - used > idle_for
                    and not (t in self._connections and self._connections[t].busy())]
            closing = [self._connections.pop(t) for t in idle if t in self._connections]
            for t in idle:
                del self._used[t]
        for connection in closing:
            connection.close()
        return len(closing)

    def size(self) -> int:
        with self._lock:
            return sum(1 for c in self._connections.values() if c.alive())

    def per_host(self) -> dict[str, int]:
        """Live pooled connections by host label (for `distsvc status`)."""
        with self._lock:
            counts: dict[str, int] = {}
            for target, connection in self._connections.items():
                if connection.alive():
                    counts[target.label] = counts.get(target.label, 0) + 1
            return counts

    def close_all(self) -> None:
        with self._lock:
            connections = list(self._connections.values())
            self._connections.clear()
            self._used.clear()
        for connection in connections:
            connection.close()
