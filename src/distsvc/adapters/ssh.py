"""The SSH adapter: the one place distsvc talks SSH (through paramiko).

Honours ~/.ssh/config (HostName, Port, User, IdentityFile, ProxyCommand, ProxyJump with any
number of hops, UserKnownHostsFile, StrictHostKeyChecking=accept-new), the ssh-agent and
known_hosts. Host keys are always verified, of jump hosts too: an unknown key is refused
unless the policy is "accept-new"; a changed key is always refused.

Every failure to connect is an errors.HostUnreachable (HostKeyRefused for a host key) whose
reason is one line saying what happened and what to do; paramiko's own messages and log
records never reach the user (`_explain` is the translation table).

paramiko is imported by this module only, and this module only by code that needs SSH, so
commands that do not connect anywhere do not pay its import time.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import getpass
import hashlib
import logging
import os
import random
import select
import socket
import stat
import subprocess
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
# More hops than this in a chain of ProxyJumps is a loop in ~/.ssh/config.
MAX_JUMPS = 8

# paramiko's transport thread logs each failed handshake with a traceback, which Python's
# last-resort handler would print on the user's terminal. Every failure also reaches the
# caller as an exception that _explain words for the user, so the records are dropped.
_paramiko_log = logging.getLogger("paramiko")
_paramiko_log.addHandler(logging.NullHandler())
_paramiko_log.propagate = False


@dataclasses.dataclass(frozen=True)
class Target:
    """Where and how to connect, after ~/.ssh/config is applied."""

    label: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    proxy_command: str | None
    # "a,b": through jump host a to jump host b, and through b to here; each hop is
    # [user@]host[:port] or a name in ~/.ssh/config.
    proxy_jump: str | None
    known_hosts_files: tuple[str, ...]
    accept_new: bool  # for this host: distsvc's policy or its StrictHostKeyChecking
    host_key_policy: str  # distsvc's own, which the jump hosts get as well


def _ssh_config() -> paramiko.SSHConfig:
    path = Path(os.path.expanduser("~/.ssh/config"))
    if path.is_file():
        return paramiko.SSHConfig.from_path(str(path))
    return paramiko.SSHConfig()


def resolve(host: distsvc.config.Host, host_key_policy: str,
            ssh_config: paramiko.SSHConfig | None = None) -> Target:
    """Apply ~/.ssh/config to a configured host; distsvc's own settings win.

    Raises HostUnreachable when ~/.ssh/config cannot be read or says something unusable.
    """
    try:
        options = (ssh_config or _ssh_config()).lookup(host.address or host.name)
        port = host.port or int(options.get("port", 22))
    except (OSError, ValueError, paramiko.SSHException) as error:
        raise distsvc.errors.HostUnreachable(
            host.name, f"~/.ssh/config is unusable: {error}") from None
    known = options.get("userknownhostsfile")
    known_files = tuple(os.path.expanduser(p) for p in known.split()) if known else (
        os.path.expanduser("~/.ssh/known_hosts"),)
    strict = str(options.get("stricthostkeychecking", "")).lower()
    proxy_command = options.get("proxycommand")
    proxy_jump = options.get("proxyjump")
    return Target(
        label=host.name,
        hostname=str(options.get("hostname", host.address or host.name)),
        port=port,
        user=host.user or str(options.get("user") or getpass.getuser()),
        identity_files=tuple(os.path.expanduser(p) for p in options.get("identityfile", [])),
        proxy_command=None if proxy_command in (None, "none") else str(proxy_command),
        proxy_jump=None if proxy_jump in (None, "none") else str(proxy_jump),
        known_hosts_files=known_files,
        # "no" and "off" would disable checking silently; distsvc treats them as accept-new,
        # which still refuses a key that changed.
        accept_new=host_key_policy == "accept-new" or strict in ("accept-new", "no", "off"),
        host_key_policy=host_key_policy,
    )


def _jump_host(spec: str, for_label: str) -> distsvc.config.Host:
    """One ProxyJump hop: `[user@]host[:port]` or `ssh://[user@]host[:port]`, where host may
    be a name in ~/.ssh/config. The hop is labelled as written, for messages."""
    spec = spec.strip()
    parsed = distsvc.config.parse_host_spec(spec.removeprefix("ssh://"))
    if parsed is None:
        raise distsvc.errors.HostUnreachable(
            for_label, f"ProxyJump {spec!r} is not [user@]host[:port] (see ~/.ssh/config)")
    return distsvc.config.Host(name=spec, address=parsed.name, port=parsed.port,
                               user=parsed.user)


def _last_hop(target: Target) -> Target:
    """The jump host right before `target`, itself reached through the hops before it.

    As OpenSSH does it: `ProxyJump a,b` is `ssh -J a -W host:port b`, so the hops before the
    last one replace its own ProxyJump or ProxyCommand, and a single hop keeps its own.
    """
    assert target.proxy_jump is not None
    *before, last = target.proxy_jump.split(",")
    hop = resolve(_jump_host(last, target.label), target.host_key_policy)
    if before:
        hop = dataclasses.replace(hop, proxy_jump=",".join(before), proxy_command=None)
    return hop


def _fingerprint(key: paramiko.PKey) -> str:
    """As OpenSSH shows it: "ssh-ed25519 SHA256:..." (PKey.fingerprint needs paramiko 3.2)."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def _known_hosts_name(target: Target) -> str:
    return target.hostname if target.port == 22 else f"[{target.hostname}]:{target.port}"


def _ssh_command(target: Target) -> str:
    """The `ssh` command line that reaches `target` as distsvc does, for a user to run."""
    jump = f"-J {target.proxy_jump} " if target.proxy_jump else ""
    port = f"-p {target.port} " if target.port != 22 else ""
    return f"ssh {jump}{port}{target.user}@{target.hostname}"


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko for a key that no known_hosts file holds (a key that differs from
    a known one raises BadHostKeyException instead, whatever the policy)."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        if not self.target.accept_new:
            raise distsvc.errors.HostKeyRefused(
                self.target.label,
                f"host key not known ({_fingerprint(key)}); verify it, then accept it with "
                f"`{_ssh_command(self.target)} true`, or use --accept-new "
                f"(host_key_policy = \"accept-new\")")
        path = Path(self.target.known_hosts_files[0])
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(path, "a", encoding="ascii") as out:
            out.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


class _ProxyCommand(paramiko.ProxyCommand):
    """paramiko's ProxyCommand, whose close() also reaps the process and closes its pipes
    (paramiko's only sends SIGTERM: every connection would leave a zombie and three fds),
    and which keeps the last line the command wrote on stderr: why it failed."""

    _said: str | None = None
    _ended = False  # its output ended: it is exiting by itself

    def recv(self, size: int) -> bytes:
        """As a socket does: what is there, b"" at the end. paramiko's loops until it has
        `size` bytes, so a command that ended would spin until the handshake timed out."""
        stdout = self.process.stdout
        assert stdout is not None
        if not select.select([stdout], [], [], self.timeout)[0]:
            raise TimeoutError()  # socket.timeout, which paramiko polls with
        try:
            data = os.read(stdout.fileno(), size)
            self._ended |= not data
            return data
        except OSError as error:
            raise paramiko.ProxyCommandFailure(" ".join(self.cmd), error.strerror or str(error)
                                               ) from None

    def close(self) -> None:
        if self.process.stderr is None or self.process.stderr.closed:
            return  # closed already (paramiko's transport closes it too)
        if self._ended:  # let it exit by itself, and keep what it said
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(0.5)
        if self.process.poll() is None:  # we end it: what it said is not why it failed
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        else:
            self._said = self._read_stderr()
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()

    def _read_stderr(self) -> str | None:
        stderr = self.process.stderr
        # Non-blocking: a process it left behind may still hold the pipe open.
        if stderr is None or not select.select([stderr], [], [], 0)[0]:
            return None
        lines = os.read(stderr.fileno(), 65536).decode("utf-8", "replace").strip()
        return lines.splitlines()[-1][:200] if lines else None

    def last_words(self) -> str | None:
        """The last line the command wrote on stderr, if it ended by itself."""
        if self.process.stderr is not None and not self.process.stderr.closed:
            try:
                self.process.wait(0.5)  # its end of output may come just before its exit
            except subprocess.TimeoutExpired:
                return None  # still running: it did not fail, something else did
            self._said = self._read_stderr()
        return self._said


def _open_socket(target: Target, timeout: float, jump: Connection | None) -> Any:
    if jump is not None:
        return jump.transport.open_channel(
            "direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0), timeout=timeout)
    if target.proxy_command:
        config = paramiko.SSHConfig.from_text(
            f"Host {target.label}\n  ProxyCommand {target.proxy_command}\n"
            f"  HostName {target.hostname}\n  Port {target.port}\n  User {target.user}")
        command = str(config.lookup(target.label)["proxycommand"])
        try:
            return _ProxyCommand(command)
        except (OSError, ValueError) as error:  # ValueError: unbalanced quotes
            why = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise distsvc.errors.HostUnreachable(
                target.label, f"ProxyCommand `{command}` could not start: {why} "
                "(see ~/.ssh/config)") from None
    sock = socket.create_connection((target.hostname, target.port), timeout=timeout)
    # paramiko leaves Nagle on: small writes then wait for delayed ACKs (~40 ms a command).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # A host that vanishes (crash, cable) is noticed within ~60 s, not TCP's ~15 minutes.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    return sock


class _Agent(paramiko.agent.AgentSSH):
    """The ssh-agent listening at `path`. paramiko's own Agent finds one only through
    $SSH_AUTH_SOCK, and a daemon serving many clients must not change its environment."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
            # AgentSSH's own handshake (its subclasses call it; the type stubs omit it).
            self._connect(sock)  # type: ignore[attr-defined]
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        self._close()  # type: ignore[attr-defined]


def _open_agent(path: str | None, timeout: float) -> _Agent | None:
    """The agent at `path`, or None when there is none there (as without an agent at all)."""
    if not path:
        return None
    try:
        return _Agent(path, timeout)
    except (OSError, paramiko.SSHException):
        return None


def agent_usable(path: str | None) -> bool:
    """Whether `path` is a socket that may be an ssh-agent (not a stale name)."""
    try:
        return bool(path) and stat.S_ISSOCK(os.stat(str(path)).st_mode)
    except OSError:
        return False


# OpenSSH's default MaxSessions: the sessions one connection carries before the server refuses
# the next. A server that refuses earlier teaches the pool its own limit.
SESSIONS_PER_CONNECTION = 10
# A connection carrying sessions is asked for a reply (an SSH global request) when it was not
# answered for KEEPALIVE_INTERVAL, and counted dead when no reply comes for KEEPALIVE_TIMEOUT:
# a frozen host's kernel still acknowledges TCP, so TCP keepalive alone never notices it.
KEEPALIVE_INTERVAL = 10.0
KEEPALIVE_TIMEOUT = 20.0
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
        self._closing: list[paramiko.Channel] = []  # closed by us, not yet by the server
        self.silent = False  # closed because the server stopped answering
        self._answered_at = time.monotonic()
        self._asked_at: float | None = None

    def reserve(self) -> bool:
        """Take one session slot, if the connection is alive and has one free."""
        with self._lock:
            if self.sessions >= self.limit or not self.alive():
                return False
            self.sessions += 1
            self.used = time.monotonic()
            return True

    def release(self, channel: paramiko.Channel | None = None) -> None:
        """Give a session slot back; `channel`, its closed channel, is kept until the server
        has closed it too (see _forget_finished_channels)."""
        with self._lock:
            self.sessions -= 1
            self.used = time.monotonic()
            if channel is not None:
                self._closing.append(channel)
        self._forget_finished_channels()

    def _forget_finished_channels(self) -> None:
        """paramiko remembers every channel id a transport ever had (`channels_seen`), so a
        connection that lives for weeks would grow by one entry per session. An id may go
        once the server has closed its channel too (the channel left `_channels`): no message
        for it can follow. Until then the channel object is held here, because `_channels`
        holds channels weakly, and a collected one would look closed too early: the server's
        late close for an id forgotten would then end the whole connection ("unknown
        channel")."""
        transport = self.transport
        with self._lock, transport.lock:
            live = transport._channels  # type: ignore[attr-defined]
            still_open = []
            for channel in self._closing:
                if live.get(channel.chanid) is channel:
                    still_open.append(channel)
                else:
                    transport.channels_seen.pop(channel.chanid, None)
            self._closing = still_open

    def check_answering(self, now: float) -> None:
        """Ask a connection that carries sessions for a reply now and then; close it when an
        answer is KEEPALIVE_TIMEOUT late, so its commands end as with a dropped connection.
        Called by the pool's watcher every few seconds."""
        with self._lock:
            if self._asked_at is not None:
                if now - self._asked_at <= KEEPALIVE_TIMEOUT:
                    return
                self.silent = True
            elif self.sessions == 0 or now - self._answered_at < KEEPALIVE_INTERVAL:
                return
            else:
                self._asked_at = now
        if self.silent:
            self.transport.close()
        else:
            threading.Thread(target=self._ask, daemon=True, name="keepalive").start()

    def _ask(self) -> None:
        # Any answer will do (OpenSSH refuses the request); paramiko waits for it, or for the
        # transport's end, which check_answering() brings about when it is too late.
        self.transport.global_request("keepalive@openssh.com", wait=True)
        with self._lock:
            self._answered_at = time.monotonic()
            self._asked_at = None

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
            self.release(channel)
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
        self.connection.release(self.channel)

    def abandon(self) -> None:
        """For a command that signals cannot reach: close its channel and, when nothing else
        runs on its connection, the connection too; the remote wrapper's watcher then ends
        the command's tree, as when a connection drops."""
        self.close()
        if self.connection.sessions == 0:
            self.connection.close()



def _jump_label(target: Target) -> str:
    return (target.proxy_jump or "").split(",")[-1].strip()


# Why a jump host did not open the tunnel: RFC 4254's reason codes for a refused channel.
_TUNNEL_REFUSED = {
    1: "it does not allow forwarding (AllowTcpForwarding in its sshd_config)",
    2: "the connection failed there (is sshd running on that port?)",
    3: "it does not forward connections",
    4: "it is out of resources; try again",
}

_BANNER = "Error reading SSH protocol banner"
# paramiko's words for "the transport ended while we were using it".
_ENDED = ("No existing session", "SSH session not active")


def _explain(error: BaseException, target: Target, timeout: float, late: bool,
             proxy_said: str | None = None) -> str:
    """One line for the user: what went wrong connecting to `target`, and what to do.

    The translation table for paramiko's and the socket layer's exceptions. `late`: the
    deadline had passed (paramiko words a timeout in many ways, e.g. "Error reading SSH
    protocol banner"). `proxy_said`: the last line a ProxyCommand that ended wrote.
    """
    at = f"{target.hostname}:{target.port}"
    text = str(error)
    if isinstance(error, paramiko.BadHostKeyException):
        return (f"host key CHANGED (now {_fingerprint(error.key)}); refusing to connect. If the "
                "change is expected, remove the old key: "
                f"ssh-keygen -R '{_known_hosts_name(target)}'")
    if isinstance(error, paramiko.PasswordRequiredException):
        return ("a private key is encrypted and distsvc asks for no passphrase: add it to the "
                "ssh-agent (ssh-add)")
    if isinstance(error, paramiko.BadAuthenticationType):
        return (f"{at} accepts only {'/'.join(error.allowed_types)} authentication, and distsvc "
                f"logs in with keys: install yours there (ssh-copy-id {target.user}@"
                f"{target.hostname})")
    if isinstance(error, paramiko.AuthenticationException):
        return (f"authentication failed as {target.user} (no key in the ssh-agent or ~/.ssh "
                "was accepted; ssh-copy-id installs one)")
    if text == "No authentication methods available":
        return (f"no key to log in as {target.user} with: none in the ssh-agent, ~/.ssh or "
                "IdentityFile (ssh-keygen makes one, ssh-copy-id installs it)")
    if proxy_said:
        return f"the ProxyCommand failed: {proxy_said}"
    if isinstance(error, paramiko.ProxyCommandFailure):
        return f"the ProxyCommand failed ({error.error}); run it by hand to see why"
    if late or isinstance(error, (socket.timeout, TimeoutError)) or text.endswith("timed out"):
        return f"no answer within {timeout:g} s (is the host up? a firewall dropping packets?)"
    if isinstance(error, UnicodeError):  # from the IDNA codec, before any lookup
        return f"{target.hostname!r} is not a valid host name (check HostName in ~/.ssh/config)"
    if isinstance(error, socket.gaierror):
        return (f"cannot resolve the host name {target.hostname!r} (check the name, its "
                "HostName in ~/.ssh/config, or DNS)")
    if isinstance(error, paramiko.ChannelException):  # the tunnel through the jump host
        why = _TUNNEL_REFUSED.get(error.code, error.text)
        return f"jump host {_jump_label(target)} could not connect to {at}: {why}"
    if isinstance(error, (paramiko.ssh_exception.NoValidConnectionsError,
                          ConnectionRefusedError)):
        return f"connection refused at {at} (is sshd running there, on that port?)"
    if isinstance(error, (ConnectionResetError, BrokenPipeError)) or "reset by peer" in text:
        return f"{at} reset the connection (sshd's MaxStartups reached, or a firewall?); try again"
    if isinstance(error, OSError) and error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"no route to {target.hostname} (is the network up?)"
    if isinstance(error, OSError) and error.filename:
        return f"cannot read {error.filename}: {error.strerror}"
    if text.startswith("Incompatible"):  # IncompatiblePeer, or older paramiko's wording
        return (f"{at} and paramiko {paramiko.__version__} share no key exchange, cipher or "
                "host key algorithm (an old server?)")
    if text.startswith(_BANNER):
        return (f"{at} closed the connection before the SSH greeting (sshd's MaxStartups "
                "reached, or no SSH server on that port); try again")
    if text.startswith("Indecipherable protocol version") or text == "Invalid SSH banner":
        return f"{at} does not speak SSH (is that the right port?)"
    if isinstance(error, EOFError) or text in _ENDED:
        return f"{at} closed the connection during the handshake (see its sshd log)"
    if isinstance(error, OSError):
        return f"cannot connect to {at}: {error.strerror or text or type(error).__name__}"
    return f"SSH handshake with {at} failed: {text or type(error).__name__}"


def _via(hop: Target, error: distsvc.errors.HostUnreachable) -> str:
    """The reason a host is unreachable because jump host `hop` is, naming the jump host."""
    if error.reason.startswith("jump host "):
        return error.reason  # a hop further back, already named
    return f"jump host {hop.label}: {error.reason}"


def connect(target: Target, timeout: float, agent_socket: str | None = None) -> Connection:
    """Connect and authenticate within `timeout` seconds, or raise HostUnreachable
    (HostKeyRefused when this host's or a jump host's key is unknown or changed).

    Keys: the IdentityFiles, the ssh-agent listening at `agent_socket` (None: no agent;
    the caller says which, so nothing depends on this process's environment), then ~/.ssh.
    Jump hosts are connected the same way, within the same `timeout`.
    """
    return _connect(target, time.monotonic() + timeout, agent_socket, 0)


def _connect(target: Target, deadline: float, agent_socket: str | None, hops: int
             ) -> Connection:
    timeout = max(0.1, deadline - time.monotonic())
    jump: Connection | None = None
    sock: Any = None
    agent: _Agent | None = None
    client = paramiko.SSHClient()
    try:
        if target.proxy_jump:
            if hops >= MAX_JUMPS:
                raise distsvc.errors.HostUnreachable(
                    target.label, f"more than {MAX_JUMPS} jump hosts: a ProxyJump loop in "
                    "~/.ssh/config?")
            hop = _last_hop(target)
            try:
                jump = _connect(hop, deadline, agent_socket, hops + 1)
            except distsvc.errors.HostUnreachable as error:
                raise type(error)(target.label, _via(hop, error), error.dropped) from None
        sock = _open_socket(target, max(0.1, deadline - time.monotonic()), jump)
        for path in ("/etc/ssh/ssh_known_hosts", *target.known_hosts_files):
            if os.path.isfile(path):
                client.load_system_host_keys(path)
        client.set_missing_host_key_policy(_HostKeyPolicy(target))
        identities = [p for p in target.identity_files if os.path.exists(p)]
        agent = _open_agent(agent_socket, timeout)
        if agent is not None:
            # SSHClient takes its agent's keys from this attribute, which it would otherwise
            # fill from $SSH_AUTH_SOCK (paramiko has done so since 1.x; 3.2's auth_strategy
            # would be the public way, but Debian 12 ships 2.12).
            client._agent = agent  # type: ignore[attr-defined]
        remaining = max(0.1, deadline - time.monotonic())
        client.connect(
            target.hostname, port=target.port, username=target.user, sock=sock,
            # paramiko takes a list too, which its type stubs do not say.
            key_filename=identities or None,  # type: ignore[arg-type]
            timeout=remaining, banner_timeout=remaining, auth_timeout=remaining,
            allow_agent=agent is not None, look_for_keys=True)
        return Connection(target, client, jump)
    except BaseException as error:
        proxy_said = sock.last_words() if isinstance(sock, _ProxyCommand) else None
        client.close()
        if sock is not None:
            sock.close()
        if jump is not None:
            jump.close()
        if isinstance(error, distsvc.errors.HostUnreachable):
            raise
        late = time.monotonic() >= deadline
        if isinstance(error, paramiko.BadHostKeyException):
            raise distsvc.errors.HostKeyRefused(
                target.label, _explain(error, target, timeout, late)) from None
        if isinstance(error, (OSError, EOFError, UnicodeError, paramiko.SSHException)):
            # (A ProxyCommand that ended said why: not a drop worth another try.)
            dropped = not late and not proxy_said and any(
                isinstance(e, (EOFError, ConnectionResetError))
                for e in (error, error.__cause__, error.__context__))
            raise distsvc.errors.HostUnreachable(
                target.label, _explain(error, target, timeout, late, proxy_said),
                dropped) from None
        raise
    finally:
        if agent is not None:
            agent.close()  # authentication is over: the keys are not needed again



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

    def __init__(self, agent_socket: str | None = None) -> None:
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
            watcher, self._watcher = self._watcher, None
        self._closed.set()
        if watcher is not None:
            watcher.join()
        for connection in connections:
            connection.close()
