"""The SSH adapter's connect path without a network: the error translation table, ProxyJump
hops, the ssh-agent a pool uses, and the refused-key state."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

import distsvc.actions.placement
import distsvc.adapters.ssh
import distsvc.adapters.ssh.handshake as ssh
import distsvc.config
import distsvc.errors
import distsvc.ranking
import distsvc.state

TARGET = ssh.Target(label="h1", hostname="127.0.0.2", port=2222, user="alice",
                    identity_files=(), proxy_command=None, proxy_jump=None,
                    known_hosts_files=("/nonexistent/known_hosts",), accept_new=False,
                    host_key_policy="strict")
JUMPED = ssh.Target(**{**TARGET.__dict__, "proxy_jump": "j1,bob@127.0.0.3:2200"})

# What paramiko and the socket layer would have said: none of it may reach the user.
RAW = ("Error reading SSH protocol banner", "No existing session", "Authentication failed.",
       "[Errno", "Unable to connect to port", "Name or service not known", "ChannelException",
       "Secsh channel", "Bad authentication type", "Private key file is encrypted",
       "No authentication methods available", "Incompatible ssh", "Indecipherable")

CASES = [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), TARGET,
     "connection refused at 127.0.0.2:2222 (is sshd running there, on that port?)"),
    (paramiko.ssh_exception.NoValidConnectionsError(
        {("127.0.0.2", 2222): ConnectionRefusedError()}), TARGET, "connection refused at"),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), TARGET,
     "cannot resolve the host name '127.0.0.2'"),
    (UnicodeError("label empty or too long"), TARGET, "is not a valid host name"),
    (TimeoutError("timed out"), TARGET, "no answer within 5 s"),
    (paramiko.SSHException("Error reading SSH protocol bannertimed out"), TARGET,
     "no answer within 5 s"),
    (paramiko.SSHException("Error reading SSH protocol banner"), TARGET,
     "127.0.0.2:2222 closed the connection before the SSH greeting"),
    (paramiko.SSHException("Error reading SSH protocol banner[Errno 104] Connection reset by "
                           "peer"), TARGET, "127.0.0.2:2222 reset the connection"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), TARGET,
     "reset the connection"),
    (paramiko.SSHException("No existing session"), TARGET,
     "closed the connection during the handshake"),
    (EOFError(), TARGET, "closed the connection during the handshake"),
    (paramiko.AuthenticationException("Authentication failed."), TARGET,
     "authentication failed as alice (no key in the ssh-agent or ~/.ssh was accepted"),
    (paramiko.BadAuthenticationType("Bad authentication type", ["password"]), TARGET,
     "accepts only password authentication"),
    (paramiko.PasswordRequiredException("Private key file is encrypted"), TARGET, "ssh-add"),
    (paramiko.SSHException("No authentication methods available"), TARGET,
     "no key to log in as alice with"),
    (paramiko.ProxyCommandFailure("ssh -W x:22 j", "Broken pipe"), TARGET,
     "the ProxyCommand failed (Broken pipe)"),
    (paramiko.ChannelException(2, "Connect failed"), JUMPED,
     "jump host bob@127.0.0.3:2200 could not connect to 127.0.0.2:2222: the connection failed"),
    (paramiko.ChannelException(1, "Administratively prohibited"), JUMPED, "AllowTcpForwarding"),
    (paramiko.SSHException("Incompatible ssh peer (no acceptable kex algorithm)"), TARGET,
     "share no key exchange, cipher or host key algorithm"),
    (paramiko.SSHException('Indecipherable protocol version "HTTP/1.1 400"'), TARGET,
     "does not speak SSH"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), TARGET, "no route to 127.0.0.2"),
    (PermissionError(errno.EACCES, "Permission denied", "/x/known_hosts"), TARGET,
     "cannot read /x/known_hosts: Permission denied"),
    (paramiko.SSHException("something new"), TARGET,
     "SSH handshake with 127.0.0.2:2222 failed: something new"),
]


@pytest.mark.parametrize(("error", "target", "expected"), CASES,
                         ids=[type(c[0]).__name__ + ":" + c[2][:30] for c in CASES])
def test_each_failure_reads_as_one_line_saying_what_to_do(
        error: BaseException, target: ssh.Target, expected: str) -> None:
    text = ssh._explain(error, target, 5.0, late=False)
    assert expected in text
    assert "\n" not in text
    assert not [raw for raw in RAW if raw in text], text


def test_past_the_deadline_any_failure_is_a_timeout() -> None:
    error = paramiko.SSHException("Error reading SSH protocol banner")
    assert ssh._explain(error, TARGET, 2.0, late=True).startswith("no answer within 2 s")


def test_what_a_failed_proxy_command_said_is_the_reason() -> None:
    error = paramiko.SSHException("Error reading SSH protocol banner")
    text = ssh._explain(error, TARGET, 5.0, late=False, proxy_said="proxy: no way through")
    assert text == "the ProxyCommand failed: proxy: no way through"


def test_a_changed_key_names_the_known_hosts_entry_to_remove() -> None:
    old, new = paramiko.RSAKey.generate(1024), paramiko.RSAKey.generate(1024)
    error = paramiko.BadHostKeyException("[127.0.0.2]:2222", new, old)
    text = ssh._explain(error, TARGET, 5.0, late=False)
    assert text.startswith("host key CHANGED (now ssh-rsa SHA256:")
    assert "ssh-keygen -R '[127.0.0.2]:2222'" in text


@pytest.fixture
def ssh_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    return tmp_path / ".ssh" / "config"


def test_proxy_jump_hops_are_aliases_or_user_host_port(ssh_config: Path) -> None:
    ssh_config.write_text("Host j1\n  HostName 127.0.0.2\n  Port 2201\n  User bob\n"
                          "Host j2\n  HostName 127.0.0.3\n  ProxyJump j0\n"
                          "Host inner\n  HostName 127.0.0.4\n"
                          "  ProxyJump j1,carol@127.0.0.5:2205,ssh://dave@j2:2202\n")
    inner = ssh.resolve(distsvc.config.Host(name="inner"), "accept-new")
    assert inner.proxy_jump == "j1,carol@127.0.0.5:2205,ssh://dave@j2:2202"
    last = ssh._last_hop(inner)
    assert (last.label, last.hostname, last.port, last.user) == (
        "ssh://dave@j2:2202", "127.0.0.3", 2202, "dave")
    # the hops before it replace its own ProxyJump; the policy goes along
    assert last.proxy_jump == "j1,carol@127.0.0.5:2205"
    assert last.accept_new and last.host_key_policy == "accept-new"
    middle = ssh._last_hop(last)
    assert (middle.hostname, middle.port, middle.user, middle.proxy_jump) == (
        "127.0.0.5", 2205, "carol", "j1")
    first = ssh._last_hop(middle)
    assert (first.label, first.hostname, first.port, first.user, first.proxy_jump) == (
        "j1", "127.0.0.2", 2201, "bob", None)
    # a single hop keeps its own ProxyJump, as with OpenSSH
    alone = ssh.resolve(distsvc.config.Host(name="x", address="127.0.0.9"), "strict")
    alone = ssh.Target(**{**alone.__dict__, "proxy_jump": "j2"})
    assert ssh._last_hop(alone).proxy_jump == "j0"


def test_a_refused_key_hint_reaches_the_host_through_its_jump_hosts() -> None:
    policy = ssh._HostKeyPolicy(ssh.Target(**{**TARGET.__dict__, "proxy_jump": "j1"}))
    with pytest.raises(distsvc.errors.HostKeyRefused) as refused:
        policy.missing_host_key(paramiko.SSHClient(), "[127.0.0.2]:2222",
                                paramiko.RSAKey.generate(1024))
    assert "`ssh -J j1 -p 2222 alice@127.0.0.2 true`" in refused.value.reason
    assert "--accept-new" in refused.value.reason


def test_malformed_jump_and_jump_loops_fail_without_connecting(ssh_config: Path) -> None:
    ssh_config.write_text("Host loop\n  HostName 127.0.0.2\n  ProxyJump loop\n"
                          "Host bad\n  HostName 127.0.0.2\n  ProxyJump a@@b\n")
    with pytest.raises(distsvc.errors.HostUnreachable) as looped:
        ssh.connect(ssh.resolve(distsvc.config.Host(name="loop"), "strict"), 5.0)
    assert "ProxyJump loop" in looped.value.message and "jump host loop" in looped.value.message
    with pytest.raises(distsvc.errors.HostUnreachable) as bad:
        ssh.connect(ssh.resolve(distsvc.config.Host(name="bad"), "strict"), 5.0)
    assert bad.value.message == (
        "bad: ProxyJump 'a@@b' is not [user@]host[:port] (see ~/.ssh/config)")


def test_an_unusable_ssh_config_is_one_line(ssh_config: Path) -> None:
    ssh_config.write_text("Host h\n  Port twenty-two\n")
    with pytest.raises(distsvc.errors.HostUnreachable) as error:
        ssh.resolve(distsvc.config.Host(name="h"), "strict")
    assert error.value.message.startswith("h: ~/.ssh/config is unusable:")


def _listening_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen()
    return sock


def test_a_pool_adopts_a_clients_agent_only_when_its_own_is_unset_or_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    first, second = tmp_path / "a1.sock", tmp_path / "a2.sock"
    with _listening_socket(first), _listening_socket(second):
        pool = distsvc.adapters.ssh.Pool()
        assert pool._agent() is None
        pool.adopt_agent(str(tmp_path / "stale.sock"))  # not there: not adopted
        assert pool._agent() is None
        pool.adopt_agent(str(first))
        pool.adopt_agent(str(second))  # ours works: kept
        assert pool._agent() == str(first)
    first.unlink()
    pool.adopt_agent(str(second))  # ours is gone: the client's
    assert pool._agent() == str(second)
    monkeypatch.setenv("SSH_AUTH_SOCK", "/from/the/environment")
    assert distsvc.adapters.ssh.Pool()._agent() == "/from/the/environment"
    assert distsvc.adapters.ssh.Pool("/given")._agent() == "/given"


def test_a_refused_host_is_unusable_remeasured_and_listed() -> None:
    hosts = [distsvc.config.Host(name="a"), distsvc.config.Host(name="b")]
    now = time.time()
    state = distsvc.state.State(hosts={
        "a": distsvc.state.refused("host key not known (ssh-ed25519 SHA256:x)"),
        "b": distsvc.state.HostState(state=distsvc.state.UP, measured_at=now,
                                     measurement=distsvc.probe.Measurement(load1=9.0, cpus=1)),
    })
    decoded = distsvc.state.decode(distsvc.state.encode(state))
    assert decoded.hosts["a"].state == "refused" and decoded.hosts["a"].measured_at is None
    ranked = distsvc.ranking.rank(hosts, decoded, now, 60)
    assert [r.host.name for r in distsvc.ranking.candidates(ranked)] == ["b"]
    assert distsvc.actions.placement.refusals(hosts, decoded) == [
        ("a", "host key not known (ssh-ed25519 SHA256:x)")]


def test_a_proxy_command_is_reaped_and_its_pipes_closed() -> None:
    failed = ssh._ProxyCommand("sh -c 'echo first >&2; echo gone for good >&2; exit 3'")
    assert failed.last_words() == "gone for good"
    failed.close()
    assert failed.process.returncode == 3 and failed.process.stderr.closed  # type: ignore[union-attr]
    running = ssh._ProxyCommand("sleep 60")
    assert running.last_words() is None  # still running: it is not why anything failed
    running.close()
    assert running.process.returncode is not None  # ended and reaped: no zombie
    assert running.last_words() is None
    running.close()  # again: nothing happens


# --- known_hosts, parsed once per file -------------------------------------------------------


def _key_line(name: str, key: paramiko.PKey) -> str:
    return f"{name} {key.get_name()} {key.get_base64()}\n"


def _known(target: ssh.Target) -> dict[str, paramiko.PKey]:
    keys = paramiko.HostKeys()
    ssh._add_known_host_keys(target, keys)
    return dict(keys.lookup(ssh._known_hosts_name(target)) or {})


def test_known_hosts_lines_are_found_by_plain_hashed_and_bracketed_names(
        tmp_path: Path) -> None:
    a, b, c = (paramiko.ECDSAKey.generate() for _ in range(3))
    path = tmp_path / "known_hosts"
    hashed = paramiko.HostKeys.hash_host("[127.0.0.3]:2222")
    path.write_text("# a comment\n\n"
                    + _key_line("other,[127.0.0.2]:2222", a)
                    + _key_line(hashed, b)
                    + _key_line("127.0.0.4", c)
                    + "@cert-authority [127.0.0.5]:2222 " + f"{a.get_name()} {a.get_base64()}\n"
                    + "short line\n")
    target = ssh.Target(**{**TARGET.__dict__, "known_hosts_files": (str(path),)})
    assert _known(target) == {a.get_name(): a}
    assert _known(ssh.Target(**{**target.__dict__, "hostname": "127.0.0.3"})) == {
        b.get_name(): b}
    assert _known(ssh.Target(**{**target.__dict__, "hostname": "127.0.0.4", "port": 22})) == {
        c.get_name(): c}
    # a marker line is not a known key (paramiko skips them too)
    assert _known(ssh.Target(**{**target.__dict__, "hostname": "127.0.0.5"})) == {}


def test_the_first_key_of_a_type_wins_and_other_types_are_kept(tmp_path: Path) -> None:
    first, second = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    rsa = paramiko.RSAKey.generate(1024)
    path = tmp_path / "known_hosts"
    name = "[127.0.0.2]:2222"
    path.write_text(_key_line(name, first) + _key_line(name, second) + _key_line(name, rsa))
    target = ssh.Target(**{**TARGET.__dict__, "known_hosts_files": (str(path),)})
    assert _known(target) == {first.get_name(): first, "ssh-rsa": rsa}


def test_a_known_hosts_file_is_read_again_only_when_it_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key, added = paramiko.ECDSAKey.generate(), paramiko.RSAKey.generate(1024)
    path = tmp_path / "known_hosts"
    path.write_text(_key_line("[127.0.0.2]:2222", key))
    target = ssh.Target(**{**TARGET.__dict__, "known_hosts_files": (str(path),)})
    parses = []
    real = ssh._parse_known_hosts
    monkeypatch.setattr(ssh, "_parse_known_hosts", lambda text: parses.append(1) or real(text))
    for _ in range(5):
        assert _known(target) == {key.get_name(): key}
    assert len(parses) == 1
    with open(path, "a") as out:  # as accept-new appends
        out.write(_key_line("[127.0.0.2]:2222", added))
    assert _known(target) == {key.get_name(): key, "ssh-rsa": added}
    assert len(parses) == 2


def test_a_missing_known_hosts_file_or_a_directory_holds_no_keys(tmp_path: Path) -> None:
    missing = ssh.Target(**{**TARGET.__dict__,
                            "known_hosts_files": (str(tmp_path / "none"),)})
    assert _known(missing) == {}
    directory = tmp_path / "known_hosts"
    directory.mkdir()  # not a file: skipped, as os.path.isfile did
    assert _known(ssh.Target(**{**TARGET.__dict__, "known_hosts_files": (str(directory),)})
                  ) == {}


def test_private_key_files_are_parsed_once_until_they_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "id_ecdsa"
    paramiko.ECDSAKey.generate().write_private_key_file(str(path))
    loads = []

    def parse(self: paramiko.SSHClient, filename: str, klass: type, password: None) -> object:
        loads.append(filename)  # paramiko's own, less its log line (there is no transport)
        return klass.from_private_key_file(filename, password)  # type: ignore[attr-defined]

    monkeypatch.setattr(paramiko.SSHClient, "_key_from_filepath", parse)
    client = ssh._Client()
    keys = [client._key_from_filepath(str(path), paramiko.ECDSAKey, None) for _ in range(3)]
    assert len(loads) == 1 and keys[0] is keys[2]
    for _ in range(2):  # the wrong key type fails each time, parsed once
        with pytest.raises(paramiko.SSHException):
            client._key_from_filepath(str(path), paramiko.RSAKey, None)
    assert len(loads) == 2
    replaced = paramiko.ECDSAKey.generate()
    replaced.write_private_key_file(str(path))
    os.utime(path, ns=(0, 0))  # a different signature even within the clock's resolution
    assert client._key_from_filepath(str(path), paramiko.ECDSAKey, None) == replaced
    assert len(loads) == 3
    # chmod and chown change only the ctime: a key made readable again is read again
    before = os.stat(path).st_ctime_ns
    while os.stat(path).st_ctime_ns == before:
        path.chmod(0o644)
        path.chmod(0o600)
    client._key_from_filepath(str(path), paramiko.ECDSAKey, None)
    assert len(loads) == 4


def test_paramiko_is_imported_without_invoke_and_match_exec_still_works(
        tmp_path: Path) -> None:
    """invoke is a third of paramiko's import time and only runs `Match exec` commands."""
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(
        'Match exec "test -d /"\n  HostName 127.0.0.7\n')
    code = ("import sys, distsvc.adapters.ssh as ssh, distsvc.config\n"
            "assert 'invoke' not in sys.modules, 'invoke imported with paramiko'\n"
            "target = ssh.resolve(distsvc.config.Host(name='x'), 'strict')\n"
            "assert target.hostname == '127.0.0.7', target\n"
            "assert 'invoke' in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ,
                            "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_transports_ask_for_aes_gcm_and_encrypt_then_mac_first() -> None:
    """paramiko's own order (aes128-ctr + hmac-sha2-256 first) is kept behind AES-GCM, which
    OpenSSH offers too and which needs no separate MAC pass; nothing is added or dropped."""
    channels = distsvc.adapters.ssh.channels
    plain = paramiko.Transport(socket.socket())
    ours = channels.new_transport(socket.socket())
    try:
        offered, asked = plain.get_security_options(), ours.get_security_options()
        assert sorted(asked.ciphers) == sorted(offered.ciphers)
        assert sorted(asked.digests) == sorted(offered.digests)
        if "aes128-gcm@openssh.com" in offered.ciphers:  # paramiko 3.3 and later
            assert asked.ciphers[:2] == ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
        others = [c for c in asked.ciphers if c not in channels.PREFERRED_CIPHERS]
        assert others == [c for c in offered.ciphers if c not in channels.PREFERRED_CIPHERS]
        assert asked.digests[0] == "hmac-sha2-256-etm@openssh.com"
    finally:
        plain.close()
        ours.close()


def test_preferred_moves_known_names_forward_and_ignores_unknown_ones() -> None:
    preferred = distsvc.adapters.ssh.channels._preferred
    assert preferred(("c", "x", "a"), ("a", "b", "c")) == ("c", "a", "b")
    assert preferred((), ("a", "b")) == ("a", "b")
