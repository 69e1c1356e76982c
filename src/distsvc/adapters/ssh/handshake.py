"""Connecting: ~/.ssh/config, host keys (jump hosts too), the ssh-agent at a given socket,
ProxyCommand and ProxyJump chains, and every failure worded as one line (`_explain`)."""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import errno
import getpass
import hashlib
import hmac
import logging
import os
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paramiko

import distsvc.adapters.ssh.channels
import distsvc.config
import distsvc.errors
import distsvc.paths
import distsvc.polling
from distsvc.adapters.ssh.channels import Connection
from distsvc.adapters.ssh.sock import TransportSocket

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


def _signature(path: str) -> distsvc.paths.Signature | None:
    """What tells a file's contents or access changed; None: no such regular file."""
    return distsvc.paths.regular_file_signature(path)


# Files read once per process and again only when they change, not once per connection: a
# scan of 200 hosts read ~/.ssh/config, the private keys and the known_hosts files 200 times.
_files_lock = threading.Lock()
_ssh_configs: dict[str, tuple[distsvc.paths.Signature, paramiko.SSHConfig]] = {}


def _ssh_config() -> paramiko.SSHConfig:
    path = os.path.expanduser("~/.ssh/config")
    signature = _signature(path)
    if signature is None:
        return paramiko.SSHConfig()
    with _files_lock:
        cached = _ssh_configs.get(path)
    if cached is not None and cached[0] == signature:
        return cached[1]
    parsed = paramiko.SSHConfig.from_path(path)  # lookups only read it: threads share it
    with _files_lock:
        _ssh_configs[path] = (signature, parsed)
    return parsed


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


@dataclasses.dataclass(frozen=True)
class _KnownHostsFile:
    """One known_hosts file's lines, by the host names they are for. Parsed once per process
    (and again when the file changes), not once per connection: a scan of N hosts would
    otherwise read N files of N lines, and paramiko's HostKeys.load checks each line against
    the lines before it, which made a scan's CPU grow with the cube of the hosts."""

    plain: dict[str, list[str]]  # host name or "[host]:port" -> its lines, in file order
    hashed: list[tuple[str, str]]  # ("|1|salt|hash", line): HashKnownHosts' hidden names


_known_hosts_files: dict[str, tuple[distsvc.paths.Signature, _KnownHostsFile]] = {}


def _parse_known_hosts(text: str) -> _KnownHostsFile:
    """The lines paramiko would use: `names keytype base64`; markers (@cert-authority,
    @revoked), comments and short lines it skips are skipped. Names match exactly or through
    their hash, as in paramiko (no wildcards)."""
    plain: dict[str, list[str]] = {}
    hashed: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#@":
            continue
        names = line.split(None, 1)[0]
        if len(line.split(None, 3)) < 3:
            continue
        for name in names.split(","):
            if name.startswith("|1|"):
                hashed.append((name, line))
            else:
                plain.setdefault(name, []).append(line)
    return _KnownHostsFile(plain, hashed)


def _known_hosts_file(path: str) -> _KnownHostsFile | None:
    """The parsed file at `path` (None when there is none); OSError when it cannot be read."""
    signature = _signature(path)
    if signature is None:
        return None
    with _files_lock:
        cached = _known_hosts_files.get(path)
    if cached is not None and cached[0] == signature:
        return cached[1]
    with open(path, encoding="utf-8", errors="replace") as file:
        parsed = _parse_known_hosts(file.read())
    with _files_lock:
        _known_hosts_files[path] = (signature, parsed)
    return parsed


_KeyFile = tuple[str, type, str | None, distsvc.paths.Signature | None,
                 distsvc.paths.Signature | None]
_private_keys: dict[_KeyFile, paramiko.PKey | Exception] = {}


class _Client(paramiko.SSHClient):
    """paramiko's SSHClient, with the private key files it tries (IdentityFile, ~/.ssh/id_*)
    parsed once per process: it would parse each file as every key type in turn, for every
    connection."""

    def _key_from_filepath(self, filename: str, klass: type, password: str | None
                           ) -> paramiko.PKey:
        key_path = filename.removesuffix("-cert.pub")
        cache_key = (filename, klass, password, _signature(key_path),
                     _signature(key_path + "-cert.pub"))
        with _files_lock:
            cached = _private_keys.get(cache_key)
        if cached is None:
            try:
                cached = super()._key_from_filepath(  # type: ignore[misc]
                    filename, klass, password)
            except (OSError, paramiko.SSHException, ValueError) as error:
                cached = error
            with _files_lock:
                _private_keys[cache_key] = cached
        if isinstance(cached, Exception):
            raise copy.copy(cached)  # a copy: each raise gets a traceback of its own
        return cached


def _add_known_host_keys(target: Target, keys: paramiko.HostKeys) -> None:
    """Add to `keys` those known for `target` in /etc/ssh/ssh_known_hosts and its known_hosts
    files, under the name paramiko looks them up by; for each key type the first line wins,
    as in paramiko's own lookup."""
    name = _known_hosts_name(target)
    for path in ("/etc/ssh/ssh_known_hosts", *target.known_hosts_files):
        known = _known_hosts_file(path)
        if known is None:
            continue
        lines = list(known.plain.get(name, ()))
        lines += [line for hashed, line in known.hashed
                  if hmac.compare_digest(paramiko.HostKeys.hash_host(name, hashed), hashed)]
        for line in lines:
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
            except paramiko.SSHException:  # bad base64
                continue
            if entry is None or entry.key is None:
                continue
            key_type = entry.key.get_name()
            if key_type not in (keys.lookup(name) or {}):
                keys.add(name, key_type, entry.key)


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
        if not distsvc.polling.wait([stdout], timeout=self.timeout)[0]:
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
        if stderr is None or not distsvc.polling.wait([stderr], timeout=0)[0]:
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
    try:
        # paramiko leaves Nagle on: small writes then wait for delayed ACKs (~40 ms a command).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A host that vanishes (crash, cable) is noticed within ~60 s, not TCP's ~15 minutes.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        return TransportSocket(sock)  # wrapped here, so _connect's failure path closes it all
    except BaseException:
        sock.close()
        raise


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
    client = _Client()
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
        _add_known_host_keys(target, client.get_host_keys())
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
            allow_agent=agent is not None, look_for_keys=True,
            transport_factory=distsvc.adapters.ssh.channels.new_transport)
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
