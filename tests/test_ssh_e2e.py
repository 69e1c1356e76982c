"""SSH behaviour against real OpenSSH servers: host keys, agent, ~/.ssh/config, proxies."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import conftest
import helpers
import sshbed

if TYPE_CHECKING:
    from distsvc.adapters.ssh.channels import Connection

WHERE = ["sh", "-c", 'set -- $SSH_CONNECTION; echo "$3"']


def test_unknown_host_key_is_refused_with_a_way_forward(client: conftest.Client) -> None:
    (client.home / ".ssh" / "known_hosts").write_text("")
    client.configure(hosts=client.bed.hosts[:1])
    result = client.run("distsvc-run", "true")
    assert result.returncode == 255
    err = result.stderr.decode()
    assert "host key not known" in err and "accept-new" in err and len(err.splitlines()) == 1


def test_accept_new_remembers_the_key(client: conftest.Client) -> None:
    known = client.home / ".ssh" / "known_hosts"
    known.write_text("")
    host = client.bed.hosts[0]
    client.configure(hosts=[host])
    assert client.run("distsvc-run", "--accept-new", "true").returncode == 0
    assert f"[{host.address}]:{host.port} {host.host_key}" in known.read_text()
    assert client.run("distsvc-run", "true").returncode == 0  # now known without the option


def test_changed_host_key_is_refused_even_with_accept_new(client: conftest.Client) -> None:
    bed = client.bed
    # h1's address with h2's key: what a man in the middle would present.
    (client.home / ".ssh" / "known_hosts").write_text(
        f"[{bed.hosts[0].address}]:{bed.hosts[0].port} {bed.hosts[1].host_key}\n")
    client.configure(hosts=bed.hosts[:1], extra='host_key_policy = "accept-new"')
    result = client.run("distsvc-run", "true")
    assert result.returncode == 255 and b"host key CHANGED" in result.stderr
    assert b"ssh-keygen -R" in result.stderr


def test_hashed_known_hosts_entries_are_checked(client: conftest.Client) -> None:
    """HashKnownHosts (Debian's default) hides the names: a hashed entry is found and
    checked like a plain one, and a hashed entry with another key is a changed key."""
    bed = client.bed
    known = client.home / ".ssh" / "known_hosts"
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    assert "|1|" in known.read_text() and bed.hosts[0].address not in known.read_text()
    client.configure(hosts=bed.hosts[:1])
    assert client.run("distsvc-run", "true").returncode == 0
    # h2 (not connected yet, through a daemon either) with h1's key
    known.write_text(f"[{bed.hosts[1].address}]:{bed.hosts[1].port} {bed.hosts[0].host_key}\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    client.configure(hosts=bed.hosts[1:2])
    result = client.run("distsvc-run", "true")
    assert result.returncode == 255 and b"host key CHANGED" in result.stderr


def test_key_from_the_ssh_agent(client: conftest.Client) -> None:
    key = client.home / ".ssh" / "id_ed25519"
    agent_key = client.home / "agent_key"
    key.rename(agent_key)
    socket_path = client.home / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)],
                             stdout=subprocess.DEVNULL)
    try:
        while not socket_path.exists():
            pass
        env = {"SSH_AUTH_SOCK": str(socket_path)}
        subprocess.run(["ssh-add", "-q", str(agent_key)], env={**os.environ, **env}, check=True)
        client.configure(hosts=client.bed.hosts[:1])
        result = client.run("distsvc-run", "echo", "via agent", env=env)
        assert (result.returncode, result.stdout) == (0, b"via agent\n"), result.stderr
        if client.mode == "direct":
            assert client.run("distsvc-run", "true").returncode == 255  # no agent, no key
        else:  # the daemon's connection, made with the agent's key, stays warm and usable
            assert client.run("distsvc-run", "true").returncode == 0
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait()


def test_ssh_config_alias_with_hostname_port_user_and_identity(
        client: conftest.Client) -> None:
    host = client.bed.hosts[1]
    ssh = client.home / ".ssh"
    (ssh / "id_ed25519").rename(ssh / "special_key")
    (ssh / "config").write_text(
        f"Host buildbox\n  HostName {host.address}\n  Port {host.port}\n"
        f"  User {client.bed.user}\n  IdentityFile ~/.ssh/special_key\n")
    client.configure(hosts=[], unknown=[{"name": "buildbox"}])
    result = client.run("distsvc-run", *WHERE)
    assert result.stdout.decode().strip() == host.address, result.stderr


def test_proxy_jump(client: conftest.Client) -> None:
    jump, target = client.bed.hosts[0], client.bed.hosts[2]
    (client.home / ".ssh" / "config").write_text(
        f"Host jumpbox\n  HostName {jump.address}\n  Port {jump.port}\n"
        f"  User {client.bed.user}\n"
        f"Host inner\n  HostName {target.address}\n  Port {target.port}\n"
        f"  User {client.bed.user}\n  ProxyJump jumpbox\n")
    client.configure(hosts=[], unknown=[{"name": "inner"}])
    result = client.run("distsvc-run", *WHERE)
    assert result.stdout.decode().strip() == target.address, result.stderr


def test_proxy_command(client: conftest.Client) -> None:
    jump, target = client.bed.hosts[0], client.bed.hosts[3]
    client.proxy_host("viaproxy", jump, target)
    client.configure(hosts=[], unknown=[{"name": "viaproxy"}])
    result = client.run("distsvc-run", *WHERE)
    assert result.stdout.decode().strip() == target.address, result.stderr


def _two_hop_config(client: conftest.Client) -> tuple[str, str]:
    """~/.ssh/config reaching h3 through h1 (an alias) and then h2 (user@host:port); returns
    the two hops as written."""
    bed = client.bed
    j1, j2, target = bed.hosts[0], bed.hosts[1], bed.hosts[2]
    second = f"{bed.user}@{j2.address}:{j2.port}"
    (client.home / ".ssh" / "config").write_text(
        f"Host j1\n  HostName {j1.address}\n  Port {j1.port}\n  User {bed.user}\n"
        f"Host inner\n  HostName {target.address}\n  Port {target.port}\n"
        f"  User {bed.user}\n  ProxyJump j1,{second}\n")
    client.configure(hosts=[], unknown=[{"name": "inner"}])
    return "j1", second


def test_proxy_jump_through_two_hops(client: conftest.Client) -> None:
    _two_hop_config(client)
    result = client.run("distsvc-run", *WHERE)
    assert result.stdout.decode().strip() == client.bed.hosts[2].address, result.stderr


def test_jump_host_keys_are_checked_refused_by_name_then_accepted_with_accept_new(
        client: conftest.Client) -> None:
    bed = client.bed
    first, second = _two_hop_config(client)
    known = client.home / ".ssh" / "known_hosts"
    known.write_text(bed.hosts[2].known_hosts_line + "\n")  # only the target's key is known
    result = client.run("distsvc-run", "true")
    assert result.returncode == 255
    (line,) = result.stderr.decode().splitlines()
    assert f"inner (jump host {first}: host key not known" in line and "--accept-new" in line

    known.write_text(bed.hosts[0].known_hosts_line + "\n" + bed.hosts[2].known_hosts_line + "\n")
    result = client.run("distsvc-run", "true")
    assert result.returncode == 255
    (line,) = result.stderr.decode().splitlines()
    assert f"jump host {second}: host key not known" in line
    assert f"`ssh -J {first} -p {bed.hosts[1].port} {bed.user}@{bed.hosts[1].address} true`" \
        in line  # how to check that key by hand, through the hop before it

    known.write_text(bed.hosts[2].known_hosts_line + "\n")
    result = client.run("distsvc-run", "--accept-new", *WHERE)
    assert result.stdout.decode().strip() == bed.hosts[2].address, result.stderr
    assert bed.hosts[0].host_key in known.read_text()
    assert bed.hosts[1].host_key in known.read_text()
    assert client.run("distsvc-run", "true").returncode == 0  # now known without the option


def test_connect_failures_read_as_one_line_each(client: conftest.Client) -> None:
    """A refused port, names that cannot resolve (made so locally: a name over 255 bytes
    fails in the resolver before any query is sent, an empty label in the IDNA codec), a
    ProxyCommand that fails or cannot start, and a server that closes at once."""
    import socket
    import threading

    closed_port = sshbed.free_port("127.0.0.6")
    closer = socket.create_server(("127.0.0.6", 0))

    def close_at_once() -> None:
        while True:
            try:
                connection, _ = closer.accept()
            except OSError:
                return
            connection.close()

    threading.Thread(target=close_at_once, daemon=True).start()
    too_long = ".".join(["a" * 60] * 5)
    (client.home / ".ssh" / "config").write_text(
        f"Host ghost\n  HostName {too_long}\n"
        "Host badname\n  HostName bad..name\n"
        "Host viaproxy\n  HostName 127.0.0.7\n"
        "  ProxyCommand sh -c 'echo \"proxy: no way through to %h\" >&2; exit 1'\n"
        "Host noproxy\n  HostName 127.0.0.7\n  ProxyCommand /nonexistent/proxy %h\n")
    user = client.bed.user
    client.configure(hosts=[], unknown=[
        {"name": "closed", "address": "127.0.0.6", "port": closed_port, "user": user},
        {"name": "closer", "address": "127.0.0.6", "port": closer.getsockname()[1],
         "user": user},
        {"name": "ghost"}, {"name": "badname"}, {"name": "viaproxy"}, {"name": "noproxy"}])
    try:
        result = client.run("distsvc-run", "true")
        rows = {r["host"]: r["error"] for r in json.loads(
            client.run("distsvc", "hosts", "--json").stdout)["hosts"]}
    finally:
        closer.close()
    assert result.returncode == 255
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith("distsvc: no reachable host: closed (")
    assert rows["closed"] == (f"connection refused at 127.0.0.6:{closed_port} "
                              "(is sshd running there, on that port?)")
    # closed at once: an end of file, or a reset if our greeting was already on its way
    assert rows["closer"].startswith("127.0.0.6:") and (
        "closed the connection before the SSH greeting" in rows["closer"]
        or "reset the connection" in rows["closer"])
    assert rows["ghost"].startswith("cannot resolve the host name")
    assert rows["badname"] == ("'bad..name' is not a valid host name (check HostName in "
                               "~/.ssh/config)")
    assert rows["viaproxy"] == "the ProxyCommand failed: proxy: no way through to 127.0.0.7"
    assert rows["noproxy"].startswith("ProxyCommand `/nonexistent/proxy 127.0.0.7` could not "
                                      "start: No such file or directory")
    for raw in ("Error reading SSH protocol banner", "[Errno", "Name or service not known",
                "Traceback", "Unable to connect", "No existing session"):
        assert raw not in line and not any(raw in e for e in rows.values())


def test_the_daemon_uses_a_clients_agent_without_changing_its_environment(
        bed: sshbed.Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-process daemon that knows no agent serves a client whose key is only in its
    ssh-agent: the agent's socket travels with the request; os.environ stays as it was."""
    import test_daemon

    client = conftest.Client(bed, tmp_path / "client")
    agent_key = client.home / "agent_key"
    (client.home / ".ssh" / "id_ed25519").rename(agent_key)
    socket_path = client.home / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)],
                             stdout=subprocess.DEVNULL)
    running = None
    try:
        helpers.wait_for(socket_path.exists, 20, "the ssh-agent's socket")
        subprocess.run(["ssh-add", "-q", str(agent_key)], check=True,
                       env={**os.environ, "SSH_AUTH_SOCK": str(socket_path)})
        client.configure(hosts=bed.hosts[:1])
        monkeypatch.setenv("HOME", str(client.home))  # ~/.ssh as the daemon's user sees it
        monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
        before = dict(os.environ)
        running = test_daemon.start(dict(client.env))
        result = client.run("distsvc-run", "echo", "via agent", env={
            "SSH_AUTH_SOCK": str(socket_path), "DISTSVC_DAEMON": "required"})
        assert (result.returncode, result.stdout) == (0, b"via agent\n"), result.stderr
        assert running.status()["connections"] == 1
        assert dict(os.environ) == before
    finally:
        if running is not None:
            running.stop.set()  # type: ignore[attr-defined]
            running.thread.join(20)
            running.daemon.pool.close_all()
        agent.send_signal(signal.SIGTERM)
        agent.wait()


def test_failed_connects_leave_no_fd_thread_or_process_behind(
        bed: sshbed.Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process: a refused key, a refused jump host key and a failing ProxyCommand,
    thirty times each; counted from /proc."""
    import threading

    import distsvc.adapters.ssh as ssh
    import distsvc.config

    client = conftest.Client(bed, tmp_path / "client")
    monkeypatch.setenv("HOME", str(client.home))
    h1, h2 = bed.hosts[0], bed.hosts[1]
    (client.home / ".ssh" / "known_hosts").write_text(h2.known_hosts_line + "\n")
    (client.home / ".ssh" / "config").write_text(
        f"Host j\n  HostName {h1.address}\n  Port {h1.port}\n  User {bed.user}\n"
        f"Host viaj\n  HostName {h2.address}\n  Port {h2.port}\n  User {bed.user}\n"
        "  ProxyJump j\n"
        "Host p\n  HostName 127.0.0.9\n  ProxyCommand sh -c 'echo no >&2; exit 1'\n")
    hosts = [distsvc.config.Host("h1", address=h1.address, port=h1.port, user=bed.user),
             distsvc.config.Host("viaj"), distsvc.config.Host("p")]

    def children() -> int:
        count = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    count += stat.read().rpartition(")")[2].split()[1] == str(os.getpid())
            except OSError:
                pass
        return count

    def counts() -> tuple[int, int, int]:
        return len(os.listdir("/proc/self/fd")), threading.active_count(), children()

    def attempt() -> list[str]:
        reasons = []
        for host in hosts:
            with pytest.raises(distsvc.errors.HostUnreachable) as error:
                ssh.connect(ssh.resolve(host, "strict"), 10.0)
            reasons.append(error.value.reason)
        return reasons

    import distsvc.errors

    first = attempt()
    assert "host key not known" in first[0] and first[1].startswith("jump host j: host key")
    assert first[2] == "the ProxyCommand failed: no"
    before = counts()
    for _ in range(30):
        attempt()
    # No more than before (what earlier tests left may still be ending meanwhile).
    helpers.wait_for(lambda: all(n <= b for n, b in zip(counts(), before, strict=True)), 10,
                     f"fds, threads and child processes back to {before}")
    assert all(n <= b for n, b in zip(counts(), before, strict=True)), (counts(), before)


def test_a_pool_that_keeps_nothing_closes_each_connection_after_its_run(
        bed: sshbed.Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`distsvc scan`'s pool (keep=False): a connection lasts as long as its probe, so a pass
    over many hosts holds as many connections as probes run at once, not one per host."""
    import distsvc.adapters.ssh as ssh
    import distsvc.config

    client = conftest.Client(bed, tmp_path / "client")
    monkeypatch.setenv("HOME", str(client.home))
    hosts = [distsvc.config.Host(h.name, address=h.address, port=h.port, user=bed.user)
             for h in bed.hosts[:3]]
    kept, passing = ssh.Pool(), ssh.Pool(keep=False)
    try:
        for host in hosts:
            assert passing.sessions(host, "strict", 10.0).run("echo hi") == (0, b"hi\n")
            assert passing.size() == 0
            assert kept.sessions(host, "strict", 10.0).run("echo hi") == (0, b"hi\n")
        assert kept.size() == len(hosts)
    finally:
        kept.close_all()
        passing.close_all()


def _rekeying_every_mib(bed: sshbed.Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                        ) -> Connection:
    """A connection to the first host whose transport rekeys every 1 MiB it sends or receives
    (paramiko's REKEY_BYTES is 512 MiB)."""
    import paramiko

    monkeypatch.setattr(paramiko.Packetizer, "REKEY_BYTES", 1 << 20)
    return _connection(bed, tmp_path, monkeypatch)


def _connection(bed: sshbed.Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> Connection:
    """A connection to the first host, made in this process."""
    import distsvc.adapters.ssh as ssh
    import distsvc.config

    client = conftest.Client(bed, tmp_path / "client")
    monkeypatch.setenv("HOME", str(client.home))
    h1 = bed.hosts[0]
    host = distsvc.config.Host("h1", address=h1.address, port=h1.port, user=bed.user)
    return ssh.connect(ssh.resolve(host, "strict"), 10.0)


def _stream_8_mib_then_run_again(connection: Connection) -> None:
    try:
        status, out = connection.run("head -c 8388608 /dev/zero", timeout=60)
        assert (status, len(out)) == (0, 8388608)
        assert connection.run("echo still", timeout=30) == (0, b"still\n")
    finally:
        connection.close()


def test_a_connection_survives_rekeying_under_a_stream(bed: sshbed.Bed, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pooled connection rekeys in the middle of some command's output: here every 1 MiB,
    through 8 MiB, then another command. The server's close of the session often arrives
    during the last rekey: paramiko answered it from its transport thread, which then waited
    for the end of the rekey only it could bring, and the connection died 30 s later (one run
    in three before Connection answered closes itself, commit 411b991; a stream of exactly
    512 MiB ends just as paramiko's own rekey begins)."""
    _stream_8_mib_then_run_again(_rekeying_every_mib(bed, tmp_path, monkeypatch))


def test_what_paramikos_transport_thread_sends_during_a_rekey_waits_for_its_end(
        bed: sshbed.Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The transport thread itself answers some messages (a jump host's channel closes, sshd's
    keepalive requests); one it sends while keys are renegotiated must not block it, or the
    rekey never ends ("Key-exchange timed out", the connection lost). Here it sends a message
    each time the server's KEXINIT arrives, the worst moment, during a stream rekeyed every
    1 MiB; the message is held until the new keys are in use."""
    import paramiko
    from paramiko.common import MSG_KEXINIT, cMSG_IGNORE

    connection = _rekeying_every_mib(bed, tmp_path, monkeypatch)
    transport = connection.transport
    negotiate = transport._handler_table[MSG_KEXINIT]  # type: ignore[attr-defined]
    clear_to_send_after = []

    def negotiate_then_send(*arguments: Any) -> None:
        # Called with the message (paramiko 3+) or with the transport and the message (2.12,
        # whose table defer_own_sends_during_rekey made this transport's own).
        negotiate(*arguments)
        ignore = paramiko.Message()
        ignore.add_byte(cMSG_IGNORE)
        ignore.add_string(b"sent by the transport thread during a rekey")
        transport._send_user_message(ignore)  # type: ignore[attr-defined]
        clear_to_send_after.append(transport.clear_to_send.is_set())

    transport._handler_table[MSG_KEXINIT] = negotiate_then_send  # type: ignore[attr-defined]
    _stream_8_mib_then_run_again(connection)
    assert clear_to_send_after and not any(clear_to_send_after)  # each sent in a rekey


def test_openssh_and_distsvc_agree_on_aes_gcm(bed: sshbed.Bed, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a real sshd, with paramiko's AES-GCM where it has it: the cipher both ways, no
    separate MAC, and a command's output arrives whole."""
    import paramiko

    import distsvc.adapters.ssh as ssh
    import distsvc.config

    # paramiko 3.3 added AES-GCM; Debian 12's 2.12 has not, and then AES-CTR with an
    # encrypt-then-MAC MAC is the best both ends share.
    gcm = "aes128-gcm@openssh.com" in paramiko.Transport._preferred_ciphers
    cipher = "aes128-gcm@openssh.com" if gcm else "aes128-ctr"
    client = conftest.Client(bed, tmp_path / "client")
    monkeypatch.setenv("HOME", str(client.home))
    h1 = bed.hosts[0]
    host = distsvc.config.Host("h1", address=h1.address, port=h1.port, user=bed.user)
    connection = ssh.connect(ssh.resolve(host, "strict"), 10.0)
    try:
        transport = connection.transport
        assert (transport.local_cipher, transport.remote_cipher) == (cipher, cipher)
        if not gcm:
            assert (transport.local_mac, transport.remote_mac) == (
                "hmac-sha2-256-etm@openssh.com", "hmac-sha2-256-etm@openssh.com")
        status, out = connection.run("head -c 3000000 /dev/urandom | od -An -tx1 | wc -l")
        assert (status, out.strip()) == (0, b"187500")
    finally:
        connection.close()


def _voluntary_switches(thread: threading.Thread) -> int:
    """How many times `thread` has gone to sleep and been woken (the kernel's count)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines()
                if line.startswith("voluntary_ctxt_switches:"))


def test_an_idle_connection_sleeps_until_it_is_closed(
        bed: sshbed.Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """paramiko's transport thread woke 10 times a second (its socket's 0.1 s timeout) to look
    at a few flags, so a daemon's 1,000 warm connections cost a third of a CPU doing nothing.
    Now it sleeps until the server sends something, and a close wakes it: its thread ends
    even when its wait would last an hour. Counted: the thread's wake-ups, from /proc."""
    connection = _connection(bed, tmp_path, monkeypatch)
    transport = connection.transport
    try:
        assert connection.run("echo warm") == (0, b"warm\n")
        time.sleep(0.5)  # the session's last packets (its close) are in
        before = _voluntary_switches(transport)
        time.sleep(2.0)
        woke = _voluntary_switches(transport) - before
        assert woke <= 4, f"the idle transport thread woke {woke} times in 2 s"
        transport.sock.settimeout(3600.0)  # only the close can end its wait now
    finally:
        connection.close()
    helpers.wait_for(lambda: not transport.is_alive(), 30, "the transport thread to end")


def test_a_rekey_a_sender_asks_for_starts_while_the_connection_is_idle(
        bed: sshbed.Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """paramiko asks for new keys after 512 MiB sent, from the sending thread, and only its
    transport thread starts the exchange, which it looked for between reads: asleep on a
    connection that receives nothing, it must be woken (the sender asks the server for a
    reply). Here the next message sent asks, and it is one the server never answers; the
    thread's wait would otherwise last an hour.

    The thread is first made to sleep in a wait begun after its timeout became an hour: one
    begun before (the handshake's are 0.1 s) would end soon and show it the flag without any
    wake. What is watched lasts: the KEXINITs sent, recorded as they go, and the rekey flag,
    which paramiko clears only once new keys are in use both ways. (`local_kex_init` does
    not: it is None again when the exchange ends, so a loaded machine's look could miss it.)"""
    from distsvc.adapters.ssh.sock import TransportSocket

    connection = _connection(bed, tmp_path, monkeypatch)
    transport = connection.transport
    sent_by: list[str] = []
    send_kex_init = transport._send_kex_init  # type: ignore[attr-defined]

    def recorded_send_kex_init() -> None:
        sent_by.append(threading.current_thread().name)
        send_kex_init()

    def asleep_in_recv() -> bool:
        frame = sys._current_frames().get(transport.ident or 0)
        return frame is not None and frame.f_code is TransportSocket.recv.__code__

    try:
        assert isinstance(transport.sock, TransportSocket)
        transport.sock.settimeout(3600.0)
        assert connection.run("true") == (0, b"")  # the thread's waits now begin anew
        helpers.wait_for(asleep_in_recv, 30, "the transport thread to wait for a message")
        transport._send_kex_init = recorded_send_kex_init  # type: ignore[attr-defined]
        transport.packetizer.REKEY_BYTES = 1  # the instance's, not paramiko's class
        transport.send_ignore()
        helpers.wait_for(lambda: sent_by, 30, "our KEXINIT to be sent")
        del transport.packetizer.REKEY_BYTES
        helpers.wait_for(lambda: not transport.packetizer.need_rekey(), 30, "the new keys")
        assert set(sent_by) == {transport.name}  # by the transport thread, woken
        assert connection.run("echo rekeyed") == (0, b"rekeyed\n")
    finally:
        connection.close()


@pytest.mark.parametrize("term", [None, "xterm"])
def test_a_start_the_server_never_answers_fails_within_the_timeout(
        bed: sshbed.Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        term: str | None) -> None:
    """paramiko waits for the server's replies to a pseudo-terminal and to `exec` without a
    bound: the machine freezing right after the session opened must not hold the caller. By
    the open's timeout, a pseudo-terminal never answered is a host not answering (nothing
    ran), a command never answered is uncertain (it may have run: never run again); and the
    connection serves the next command once the machine is back."""
    import distsvc.errors

    connection = _connection(bed, tmp_path, monkeypatch)
    open_session = connection._open_session
    frozen = contextlib.ExitStack()

    def open_then_freeze(timeout: float) -> object:
        channel = open_session(timeout)
        frozen.enter_context(bed.hosts[0].hung(connections=True))
        return channel

    connection._open_session = open_then_freeze  # type: ignore[method-assign]
    try:
        with frozen:
            if term is None:
                with pytest.raises(distsvc.errors.StartUncertain):
                    connection.open("echo never", timeout=2.0)
            else:
                with pytest.raises(distsvc.errors.HostUnreachable) as error:
                    connection.open("echo never", term=term, timeout=2.0)
                assert error.value.reason.startswith("no answer within 2 s"), error.value.reason
        del connection._open_session
        assert connection.run("echo back", timeout=30) == (0, b"back\n")
    finally:
        connection.close()


def test_a_keepalive_set_on_the_transport_still_fires_while_idle(
        bed: sshbed.Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """paramiko sends its keepalive (Transport.set_keepalive) when a wait of its transport
    thread ends with nothing read; those waits were 0.1 s. distsvc asks for replies from the
    pool's watcher instead, but a keepalive set on the transport must still fire: its interval
    bounds the wait, though the wait would otherwise last an hour."""
    connection = _connection(bed, tmp_path, monkeypatch)
    transport = connection.transport
    sent: list[str] = []
    global_request = transport.global_request

    def counted(kind: str, *arguments: Any, **options: Any) -> Any:
        sent.append(kind)
        return global_request(kind, *arguments, **options)

    try:
        transport.sock.settimeout(3600.0)
        transport.global_request = counted  # type: ignore[method-assign]
        transport.set_keepalive(1)
        helpers.wait_for(lambda: len(sent) >= 2, 30, "two keepalives")
        assert connection.run("echo alive") == (0, b"alive\n")
    finally:
        connection.close()
