"""Hosts at OpenSSH's defaults for MaxSessions and MaxStartups, more commands than
one connection carries, and hosts that fail and recover. Against real sshd, both without a
daemon and through one (DISTSVC_DAEMON=required)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import conftest
import helpers
import sshbed

if TYPE_CHECKING:
    import distsvc.adapters.ssh

COMMANDS = 25  # on one host: more than its MaxSessions, in the daemon on pooled connections


def test_more_commands_than_max_sessions_all_run_are_measured_and_signalled(
        client: conftest.Client) -> None:
    client.configure(hosts=client.bed.hosts[:1])
    marker = "1101.5"
    clients = [client.popen("distsvc-run", "sh", "-c", f"sleep {marker}",
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for _ in range(COMMANDS)]
    try:
        helpers.wait_for(lambda: len(client.bed.remote_processes(f"sleep {marker}"))
                         >= COMMANDS, 90, f"{COMMANDS} commands running on h1")
        # The probe needs a session too: it gets one on another connection.
        hosts = client.run("distsvc", "hosts", "--refresh", "--json")
        row = json.loads(hosts.stdout)["hosts"][0]
        assert (row["host"], row["state"]) == ("h1", "up"), row
        # Ctrl-C, SIGTERM and hang-ups reach every command, whichever connection carries it.
        signals = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
        for index, process in enumerate(clients):
            process.send_signal(signals[index % 3])
        statuses = [p.wait(60) for p in clients]
        assert statuses == [128 + signals[i % 3] for i in range(COMMANDS)], [
            p.stderr.read() if p.stderr else b"" for p in clients]
    finally:
        helpers.reap(clients)
    helpers.wait_for(lambda: not client.bed.remote_processes(marker), 10, "every command to end")


def test_a_recovered_host_serves_the_very_next_command(client: conftest.Client) -> None:
    host = client.bed.hosts[0]
    client.configure(hosts=[host])
    assert client.run("distsvc-run", "true").returncode == 0
    host.stop()
    try:
        down = client.run("distsvc-run", "true")
        assert down.returncode == 255 and b"no reachable host" in down.stderr, down.stderr
    finally:
        host.start()
    # Not max_age (30 s) later: at once (within the few seconds of the retry back-off).
    up = client.run("distsvc-run", "echo", "back")
    assert (up.returncode, up.stdout) == (0, b"back\n"), up.stderr


def test_a_failed_host_only_ranks_last(client: conftest.Client) -> None:
    first, second = client.bed.hosts[:2]
    client.configure(hosts=[first, second])
    first.stop()
    try:
        result = client.run("distsvc-run", "sh", "-c", 'set -- $SSH_CONNECTION; echo "$3"')
        assert (result.returncode, result.stdout) == (0, f"{second.address}\n".encode())
    finally:
        first.start()
    # Measured down a moment ago and now back: the next command still goes where it can.
    assert client.run("distsvc-run", "true").returncode == 0


def test_a_host_allowing_fewer_sessions_teaches_the_pool_its_limit(
        daemon_client: conftest.Client) -> None:
    """MaxSessions 2 here (below OpenSSH's 10) so that the daemon's pool meets a refusal it
    could not predict and must learn from it. (Without a daemon each command is a process
    with a connection of its own.)"""
    client = daemon_client
    with sshbed.extra_host(client.bed, "tight", "127.0.0.20", max_sessions=2) as tight:
        with open(client.home / ".ssh" / "known_hosts", "a") as known:
            known.write(tight.known_hosts_line + "\n")
        client.configure(hosts=[tight])
        marker = "1102.5"
        clients = [client.popen("distsvc-run", "sleep", marker, stdin=subprocess.DEVNULL,
                                stderr=subprocess.PIPE) for _ in range(7)]
        try:
            # The commands themselves, not their wrappers (whose arguments name them too):
            # counted with the wrappers, 7 could be reached before every session was open.
            helpers.wait_for(lambda: len([p for p in client.bed.remote_processes(marker)
                                          if p.split(None, 1)[1] == f"sleep {marker}"]) >= 7,
                             60, "7 commands on a host allowing 2 sessions a connection")
            status = json.loads(client.run("distsvc", "status", "--json").stdout)
            assert status["connections"] >= 4, status
            for process in clients:
                process.send_signal(signal.SIGINT)
            assert [p.wait(60) for p in clients] == [130] * 7
        finally:
            helpers.reap(clients)
        helpers.wait_for(lambda: not client.bed.remote_processes(marker), 10, "the commands")


def test_ctrl_c_takes_another_connection_when_the_commands_is_full(
        client: conftest.Client) -> None:
    """MaxSessions 1 here, so that the signal's session is refused on the command's own
    connection and must be delivered over another one."""
    with sshbed.extra_host(client.bed, "single", "127.0.0.21", max_sessions=1) as single:
        with open(client.home / ".ssh" / "known_hosts", "a") as known:
            known.write(single.known_hosts_line + "\n")
        client.configure(hosts=[single])
        process = client.popen("distsvc-run", "sleep", "1103.5", stdin=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
        try:
            helpers.wait_for(lambda: client.bed.remote_processes("sleep 1103.5"), 30,
                             "the command")
            process.send_signal(signal.SIGINT)
            assert process.wait(60) == 130
            assert process.stderr is not None
            assert b"could not deliver" not in process.stderr.read()
        finally:
            helpers.reap([process])
        helpers.wait_for(lambda: not client.bed.remote_processes("1103.5"), 10, "the command")


def test_a_signal_that_cannot_be_delivered_is_said_and_ends_the_command(
        client: conftest.Client) -> None:
    """MaxSessions 1 behind a proxy that takes no second connection: no session can carry the
    signal. It is said on stderr (even with -q), and the command's session is closed, which
    ends it on the host."""
    with sshbed.extra_host(client.bed, "single", "127.0.0.22", max_sessions=1) as single, \
            conftest.TcpProxy(single.address, single.port) as proxy:
        (client.home / ".ssh" / "known_hosts").write_text(
            f"[127.0.0.1]:{proxy.port} {single.host_key}\n")
        client.configure(hosts=[], unknown=[{"name": "proxied", "address": "127.0.0.1",
                                             "port": proxy.port, "user": client.bed.user}])
        # Measured now, so the command needs no probe: one connection, which it fills.
        assert client.run("distsvc", "hosts").returncode == 0
        process = client.popen("distsvc-run", "-q", "sleep", "1104.5",
                               stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            helpers.wait_for(lambda: client.bed.remote_processes("sleep 1104.5"), 30,
                             "the command")
            proxy.stop_accepting()
            process.send_signal(signal.SIGINT)
            assert process.wait(60) == 255
            assert process.stderr is not None
            err = process.stderr.read().decode()
            assert "could not deliver SIGINT to the command on proxied" in err, err
            assert "session was closed" in err, err
        finally:
            helpers.reap([process])
        helpers.wait_for(lambda: not client.bed.remote_processes("1104.5"), 15, "the command")


@contextlib.contextmanager
def sessions_here(bed: sshbed.Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                  ) -> Iterator[distsvc.adapters.ssh.Sessions]:
    """Sessions on h1 through a pool of this process (the test is the client)."""
    import distsvc.adapters.ssh
    import distsvc.config

    client = conftest.Client(bed, tmp_path / "client")
    for name, value in client.env.items():
        monkeypatch.setenv(name, value)
    host = client.bed.hosts[0]
    pool = distsvc.adapters.ssh.Pool()
    try:
        yield pool.sessions(distsvc.config.Host(name=host.name, address=host.address,
                                                port=host.port, user=client.bed.user),
                            "strict", 10.0)
    finally:
        pool.close_all()


def test_a_long_lived_connection_does_not_remember_every_session(
        bed: sshbed.Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """paramiko keeps an entry per channel id a transport ever had; the pool forgets the
    finished ones, so a connection that lives for weeks does not grow with every command."""
    with sessions_here(bed, tmp_path, monkeypatch) as sessions:
        for _ in range(60):
            assert sessions.run("true") == (0, b"")
        [connection] = [c for cs in sessions.pool._connections.values() for c in cs]
        assert len(connection.transport.channels_seen) <= 2
        assert connection.sessions == 0


def test_an_end_of_input_crossing_the_servers_close_leaves_the_connection_alive(
        bed: sshbed.Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The soak's flake, made certain. A command that does not read its input ends while the
    stdin pump sends its end-of-file: paramiko marks the EOF sent under the channel's lock but
    sends it after, and its own thread may meanwhile answer the server's close of the channel.
    OpenSSH frees a channel once both sides closed it and ends the whole connection on a
    message for a channel it no longer has ("ieof packet referred to nonexistent channel"), so
    every other command on the connection was lost. The seam (the transport's send) holds the
    EOF back until the server's close has been handled, as a busy machine's scheduler now and
    then does: the close's answer must still come after it."""
    import distsvc.adapters.ssh

    with sessions_here(bed, tmp_path, monkeypatch) as sessions:
        other = sessions.open("cat")
        quick = sessions.open("exec true")
        connection = quick.connection
        assert other.connection is connection
        transport = connection.transport
        send = transport._send_user_message
        channel_eof = 96  # SSH_MSG_CHANNEL_EOF, then the recipient's channel id

        def held_back(message: Any) -> None:
            data = message.asbytes()
            if data[0] == channel_eof and int.from_bytes(data[1:5], "big") == (
                    quick.channel.remote_chanid):
                helpers.wait_for(lambda: quick.channel.closed, 30, "the server's close")
                # Answered after the close was handled: whatever that sent has gone out.
                transport.global_request("keepalive@openssh.com", wait=True)
            send(message)

        monkeypatch.setattr(transport, "_send_user_message", held_back)
        quick.close_stdin()
        assert quick.finished() and quick.exit_status() == 0
        quick.close()
        assert distsvc.adapters.ssh.run_to_end(other, b"still here\n", 30) == (
            0, b"still here\n")
        assert connection.alive() and connection.sessions == 0


def test_a_session_opened_behind_a_finished_one_is_not_refused_for_its_slot(
        bed: sshbed.Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sshd frees a finished session's slot only after handling every packet read with our
    close, so a session opened right behind it often met "open failed" at MaxSessions though
    a slot was free (about one time in two here), and the pool learned a limit of 9 for the
    host, for good. The refusal itself arrives after the slot was freed: asked again, sshd
    says yes, and the limit stays OpenSSH's 10."""
    import distsvc.adapters.ssh

    with sessions_here(bed, tmp_path, monkeypatch) as sessions:
        for _ in range(10):
            others = [sessions.open("cat") for _ in range(9)]
            quick = sessions.open("exec true")
            connection = quick.connection
            assert all(other.connection is connection for other in others)
            assert distsvc.adapters.ssh.run_to_end(quick, b"", 30) == (0, b"")
            assert connection.run("echo again", timeout=30) == (0, b"again\n")
            assert connection.limit == distsvc.adapters.ssh.SESSIONS_PER_CONNECTION
            for other in others:
                assert distsvc.adapters.ssh.run_to_end(other, b"", 30) == (0, b"")
