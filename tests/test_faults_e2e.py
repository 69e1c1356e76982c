"""Faults against real OpenSSH servers: a host's sshd killed, the connection cut, a host that
stops answering, a host at its MaxSessions. What must hold each time: the client gets status
255 and one line saying what happened, the command's remote tree is ended, a command that may
have started is never run a second time, and the next command is served (on another host at
once, and on the same host as soon as it is back).

In-process (`direct`) and through a daemon (`daemon`, DISTSVC_DAEMON=required) alike, unless
a test says why only one of them is meaningful.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import conftest
import helpers
import sshbed

WHERE = ["distsvc-run", "sh", "-c", 'set -- $SSH_CONNECTION; echo "$3"']
# Short timeouts, so a host that does not answer costs seconds; the waits below are generous.
TIMEOUTS = "probe_timeout = 2\nconnect_timeout = 3"
PARAMIKO_WORDS = ("Traceback", "Secsh", "ChannelException", "paramiko", "SSHException")
# How long a client may take to be told its host is gone: the bound of a test, not a figure.
TOLD_WITHIN = 60


def one_line(err: bytes) -> str:
    """The client's stderr, which must be one line of distsvc's own words."""
    text = err.decode(errors="replace").strip()
    assert not any(word in text for word in PARAMIKO_WORDS), f"raw library text: {text!r}"
    assert text and "\n" not in text, f"not one line: {text!r}"
    return text


def last_line(err: bytes) -> str:
    """The last line of the client's stderr, after any notices of hosts tried; every line
    is distsvc's own."""
    text = err.decode(errors="replace").strip()
    assert not any(word in text for word in PARAMIKO_WORDS), f"raw library text: {text!r}"
    lines = text.splitlines()
    assert lines and all(line.startswith("distsvc: ") for line in lines), text
    return lines[-1]


def where(client: conftest.Client) -> tuple[int, str, bytes]:
    """Run WHERE: (status, the address of the host that ran it, stderr)."""
    result = client.run(*WHERE)
    return result.returncode, result.stdout.decode().strip(), result.stderr


def home_file(bed: sshbed.Bed, name: str) -> Path:
    path = bed.home / name
    path.unlink(missing_ok=True)
    return path


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def finished(process: subprocess.Popen[bytes], within: float) -> tuple[int, bytes]:
    """The client's status and stderr once it ends; fails (naming the bound) if it does not."""
    try:
        _, err = process.communicate(timeout=within)
    except subprocess.TimeoutExpired as timeout:
        # Not communicate() again: a daemon still holding the client's stderr (passed to it
        # as an fd) would keep the pipe open however dead the client is.
        process.kill()
        process.wait(10)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        raise AssertionError(f"the client did not end within {within} s; its stderr so far: "
                             f"{timeout.stderr!r}") from None
    return process.returncode, err


@contextlib.contextmanager
def restarted_at_the_end(host: sshbed.Host) -> Iterator[sshbed.Host]:
    """The bed's host is shared by every test: it must be up again after this one."""
    try:
        yield host
    finally:
        if host.process is None:
            host.start()


def test_sshd_killed_mid_command(client: conftest.Client) -> None:
    bed = client.bed
    h1, h2 = bed.hosts[0], bed.hosts[1]
    client.configure(hosts=[h1], extra=TIMEOUTS)
    with restarted_at_the_end(h1):
        process = client.popen("distsvc-run", "sleep", "4101.5", stderr=subprocess.PIPE)
        helpers.wait_for(lambda: helpers.sleeps_with("4101.5"), 30, "the command")
        h1.stop()  # the server and every session it serves, the command's tree with them
        status, err = finished(process, TOLD_WITHIN)
        assert status == 255
        message = one_line(err)
        assert "h1" in message and "connection lost" in message, message
        helpers.wait_for(lambda: not helpers.sleeps_with("4101.5"), 10, "the tree to end")

        client.configure(hosts=[h1, h2], extra=TIMEOUTS)
        status, address, err = where(client)
        assert (status, address) == (0, h2.address), err

        h1.start()
        client.configure(hosts=[h1], extra=TIMEOUTS)
        status, address, err = where(client)
        assert (status, address) == (0, h1.address), err  # the very next command, no ban
        assert b"trying the next host" not in err


@pytest.fixture
def proxied(client: conftest.Client) -> Iterator[conftest.TcpProxy]:
    """h1 behind a TCP relay whose connections the test can cut, as host `via-proxy`."""
    host = client.bed.hosts[0]
    with conftest.TcpProxy(host.address, host.port) as proxy:
        with open(client.home / ".ssh" / "known_hosts", "a") as known:
            known.write(f"[127.0.0.1]:{proxy.port} {host.host_key}\n")
        yield proxy


def via_proxy(client: conftest.Client, proxy: conftest.TcpProxy) -> dict[str, object]:
    return {"name": "via-proxy", "address": "127.0.0.1", "port": proxy.port,
            "user": client.bed.user}


def test_connection_cut_after_the_command_started_is_reported_not_retried(
        client: conftest.Client, proxied: conftest.TcpProxy) -> None:
    """Once the command may have started, a lost connection is the command's failure: running
    it again elsewhere could do its work twice (here: append a second line)."""
    bed = client.bed
    once = home_file(bed, f"cut-once-{client.mode}")
    # via-proxy is the best host, provided its probe answers: on a loaded machine a probe
    # through the proxy took more than TIMEOUTS' 2 s, h2 ran the command, and the cut never
    # reached it (the client waited out TOLD_WITHIN). Nothing here waits for these bounds.
    client.configure(hosts=[bed.hosts[1]], unknown=[via_proxy(client, proxied)],
                     probes={"h2": "echo 9"}, extra="probe_timeout = 30\nconnect_timeout = 30")
    process = client.popen("distsvc-run", "sh", "-c",
                           f'echo ran >> "$HOME/{once.name}"; sleep 4102.5',
                           stderr=subprocess.PIPE)
    helpers.wait_for(lambda: helpers.sleeps_with("4102.5"), 30, "the command")
    assert lines_of(once) == ["ran"]
    proxied.sever()
    status, err = finished(process, TOLD_WITHIN)
    assert status == 255
    message = one_line(err)
    assert "via-proxy" in message and "connection lost" in message, message
    helpers.wait_for(lambda: not helpers.sleeps_with("4102.5"), 10, "the tree to end")
    assert lines_of(once) == ["ran"], "the command ran again"

    # The daemon serves on: on another host, and on the same one (the relay is back at once).
    client.configure(hosts=[bed.hosts[1]], extra=TIMEOUTS)
    assert where(client)[:2] == (0, bed.hosts[1].address)
    client.configure(hosts=[], unknown=[via_proxy(client, proxied)], extra=TIMEOUTS)
    status, address, err = where(client)
    assert (status, address) == (0, bed.hosts[0].address), err


@pytest.mark.timeout(240)
def test_host_that_stops_answering_mid_command(client: conftest.Client) -> None:
    """The machine freezes (its sshd and the processes serving our connection are
    SIGSTOPped): the kernel still acknowledges TCP, so only distsvc's own check of the
    connection can tell. The client is told within seconds (here: within TOLD_WITHIN)."""
    bed = client.bed
    h1, h2 = bed.hosts[0], bed.hosts[1]
    client.configure(hosts=[h1], extra=TIMEOUTS)
    process = client.popen("distsvc-run", "sleep", "4103.5", stderr=subprocess.PIPE)
    helpers.wait_for(lambda: helpers.sleeps_with("4103.5"), 30, "the command")
    with h1.hung(connections=True):
        status, err = finished(process, TOLD_WITHIN)
        assert status == 255
        message = one_line(err)
        assert "h1" in message, message
        # While h1 still hangs, another host serves the next command.
        client.configure(hosts=[h1, h2], extra=TIMEOUTS)
        status, address, err = where(client)
        assert (status, address) == (0, h2.address), err
    # Back: the tree whose connection was given up is ended, and h1 serves at once.
    helpers.wait_for(lambda: not helpers.sleeps_with("4103.5"), 20, "the tree to end")
    client.configure(hosts=[h1], extra=TIMEOUTS)
    status, address, err = where(client)
    assert (status, address) == (0, h1.address), err


@pytest.mark.timeout(240)
def test_host_that_stops_answering_before_a_command(client: conftest.Client) -> None:
    bed = client.bed
    h1, h2 = bed.hosts[0], bed.hosts[1]
    client.configure(hosts=[h1], extra=TIMEOUTS)
    assert where(client)[:2] == (0, h1.address)  # through a daemon: its connection is warm
    with h1.hung(connections=True):
        client.configure(hosts=[h1, h2], extra=TIMEOUTS)
        status, address, err = where(client)
        assert (status, address) == (0, h2.address), err
        client.configure(hosts=[h1], extra=TIMEOUTS)
        process = client.popen(*WHERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        status, err = finished(process, TOLD_WITHIN)
        assert status == 255
        message = last_line(err)  # after "h1: ...; trying the next host", if said
        assert "h1" in message, message
    status, address, err = where(client)
    assert (status, address) == (0, h1.address), err  # back: served at once, no ban
    assert b"trying the next host" not in err


@contextlib.contextmanager
def one_session_host(client: conftest.Client) -> Iterator[sshbed.Host]:
    """A server with `MaxSessions 1`: one running command fills a connection, so the next
    session on it is refused for certain with two commands instead of eleven held open."""
    with sshbed.extra_host(client.bed, "one-session", "127.0.0.21", max_sessions=1) as host:
        with open(client.home / ".ssh" / "known_hosts", "a") as known:
            known.write(host.known_hosts_line + "\n")
        client.configure(hosts=[host], extra=TIMEOUTS)
        yield host


def test_a_refused_session_is_run_once_on_another_connection(
        daemon_client: conftest.Client) -> None:
    """Through the daemon, whose connection to the host is shared (in-process, each client
    has a connection of its own, so nothing is refused). The refused session provably did
    not start, so the command runs elsewhere: exactly once."""
    client = daemon_client
    once = home_file(client.bed, "refused-once")
    with one_session_host(client):
        refused_session_run_once(client, once)


def refused_session_run_once(client: conftest.Client, once: Path) -> None:
    first = client.popen("distsvc-run", "sleep", "4104.5", stderr=subprocess.PIPE)
    try:
        helpers.wait_for(lambda: helpers.sleeps_with("4104.5"), 30, "the first command")
        result = client.run("distsvc-run", "sh", "-c", f'echo ran >> "$HOME/{once.name}"')
        assert (result.returncode, lines_of(once)) == (0, ["ran"]), result.stderr
        assert b"trying the next host" not in result.stderr
        # The probe is refused a session on the full connection too, yet measures the host.
        rows = json.loads(client.run("distsvc", "hosts", "--refresh", "--json").stdout)["hosts"]
        assert rows[0]["state"] == "up", rows
    finally:
        first.send_signal(signal.SIGINT)
    status, err = finished(first, TOLD_WITHIN)
    assert status == 130, err
    helpers.wait_for(lambda: not helpers.sleeps_with("4104.5"), 10, "the tree to end")
    assert lines_of(once) == ["ran"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_reaches_a_command_on_a_full_connection(
        client: conftest.Client, signum: int) -> None:
    """The command's own session fills its connection (MaxSessions 1), so the signal
    cannot travel on a second session there: it must go another way, never be dropped."""
    with one_session_host(client):
        signal_on_a_full_connection(client, signum)


def signal_on_a_full_connection(client: conftest.Client, signum: int) -> None:
    marker = f"4105.{int(signum)}"
    process = client.popen("distsvc-run", "sh", "-c",
                           f"trap '' HUP; sleep {marker} & sleep {marker}; wait",
                           stderr=subprocess.PIPE)
    helpers.wait_for(lambda: len(helpers.sleeps_with(marker)) == 2, 30, "the tree")
    process.send_signal(signum)
    status, err = finished(process, TOLD_WITHIN)
    assert status == 128 + signum, err
    helpers.wait_for(lambda: not helpers.sleeps_with(marker), 10, "the tree to end")
