"""A heavy user's day, shortened: hundreds of commands through one daemon, which must end it
holding what it held after a warm-up. Counts from /proc (tests/proc.py), never durations.

The hosts run OpenSSH's defaults (MaxSessions 10), and batches put more commands than that on
a host at once. One host is reached through a ProxyCommand (`ssh -W` over another bed host),
so every connection the daemon makes there is also a child process of the daemon.

Through a daemon only (DISTSVC_DAEMON=required): what is measured is the daemon.
The longer soak (20,000 commands) is bench/soak.py; its figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Sequence

import conftest
import helpers
import proc

BATCH = 40
SEQUENTIAL = 30
BATCHES = 4  # of BATCH commands at once: 40 on 3 hosts, so more than 10 on one of them
TERMINAL = 10  # with a pseudo-terminal, one after another
SIGNALLED = 10  # at once, per kind: Ctrl-C on a terminal, SIGINT, SIGKILL of the client
FD_SLACK = 2
THREAD_SLACK = 2
FDS_PER_CONNECTION = 4  # a socket, or a ProxyCommand's pipes; and paramiko's wake-up pipe
# Connections the pool may hold at the end: per host, what BATCH commands at once need at
# MaxSessions 10 (with a session spare for probes and signals), not one more per command.
MAX_POOLED = 3 * (BATCH // 9 + 1)
RSS_SLACK_KIB = 5 * 1024
SETTLE = 30.0  # seconds the daemon gets to release what a finished command held
MIB = 1024 * 1024
STREAM_BYTES = 1 << 30


def daemon_pid(client: conftest.Client) -> int:
    result = client.run("distsvc", "status", "--json")
    assert result.returncode == 0, result.stderr
    pid: int = json.loads(result.stdout)["pid"]
    return pid


def proxied_hosts(client: conftest.Client) -> None:
    """h1 and h2 directly, and h4 through `ssh -W` over h3 (a ProxyCommand child per
    connection)."""
    bed = client.bed
    jump, target = bed.hosts[2], bed.hosts[3]
    client.proxy_host("viaproxy", jump, target)
    client.configure(hosts=bed.hosts[:2], unknown=[{"name": "viaproxy"}])


def echo_exit(tag: str, status: int) -> list[str]:
    """A command whose output and status say which one it was."""
    return ["distsvc-run", "sh", "-c", 'echo "$1"; exit "$2"', "sh", tag, str(status)]


def sequential(client: conftest.Client, count: int, prefix: str) -> None:
    for i in range(count):
        tag, status = f"{prefix}-{i}", i % 7
        result = client.run(*echo_exit(tag, status))
        assert (result.returncode, result.stdout, result.stderr) == (
            status, f"{tag}\n".encode(), b""), tag


def at_once(client: conftest.Client, count: int, prefix: str) -> None:
    """`count` clients started together; each must get its own output and status."""
    processes = []
    for i in range(count):
        processes.append(client.popen(*echo_exit(f"{prefix}-{i}", i % 5),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
    outcomes = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        outcomes.append((process.returncode, out, err))
    expected = [(i % 5, f"{prefix}-{i}\n".encode(), b"") for i in range(count)]
    pairs = enumerate(zip(outcomes, expected, strict=True))
    wrong = [(i, got) for i, (got, want) in pairs if got != want]
    assert not wrong, f"{len(wrong)} of {count} clients got the wrong result: {wrong[:5]}"


def with_terminal(client: conftest.Client, count: int, prefix: str) -> None:
    for i in range(count):
        tag, status = f"{prefix}-{i}", i % 3
        term = helpers.Terminal(client, *echo_exit(tag, status))
        try:
            assert term.wait(60) == status, term.output
            assert tag.encode() in term.output
        finally:
            term.close()


def wait_for_sleeps(marker: str, count: int) -> None:
    helpers.wait_for(lambda: len(helpers.sleeps_with(marker)) >= count, 60,
                     f"{count} `sleep {marker}` on the hosts")


def wait_for_no_sleeps(marker: str) -> None:
    helpers.wait_for(lambda: not helpers.sleeps_with(marker), 30, f"`sleep {marker}` to end")


def ctrl_c_on_terminals(client: conftest.Client, count: int, marker: str) -> None:
    terms = [helpers.Terminal(client, "distsvc-run", "sh", "-c", f"echo READY; sleep {marker}")
             for _ in range(count)]
    try:
        for term in terms:
            term.read_until(b"READY", timeout=60)
        wait_for_sleeps(marker, count)
        for term in terms:
            term.write(b"\x03")
        assert [term.wait(60) for term in terms] == [130] * count
    finally:
        for term in terms:
            term.close()
    wait_for_no_sleeps(marker)


def started_sleeps(client: conftest.Client, count: int,
                   marker: str) -> Sequence[subprocess.Popen[bytes]]:
    processes = [client.popen("distsvc-run", "sleep", marker, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for _ in range(count)]
    wait_for_sleeps(marker, count)
    return processes


def interrupted(client: conftest.Client, count: int, marker: str) -> None:
    processes = started_sleeps(client, count, marker)
    for process in processes:
        process.send_signal(signal.SIGINT)
    statuses = [process.wait(60) for process in processes]
    for process in processes:
        assert process.stderr is not None
        process.stderr.close()
    assert statuses == [130] * count
    wait_for_no_sleeps(marker)


def vanished(client: conftest.Client, count: int, marker: str) -> None:
    """Clients SIGKILLed mid-command: the daemon must end their commands and forget them."""
    processes = started_sleeps(client, count, marker)
    for process in processes:
        process.kill()
        process.wait(10)
        assert process.stderr is not None
        process.stderr.close()
    wait_for_no_sleeps(marker)


def mixed_day(client: conftest.Client, prefix: str, marker: int, sequential_count: int,
              batches: int, terminal_count: int, signalled: int) -> int:
    """One of everything; returns how many commands it ran. `marker` makes the remote
    `sleep`s of this call its own."""
    sequential(client, sequential_count, f"{prefix}-seq")
    for b in range(batches):
        at_once(client, BATCH, f"{prefix}-batch{b}")
    with_terminal(client, terminal_count, f"{prefix}-tty")
    ctrl_c_on_terminals(client, signalled, f"{marker}1.5")
    interrupted(client, signalled, f"{marker}2.5")
    vanished(client, signalled, f"{marker}3.5")
    return sequential_count + batches * BATCH + terminal_count + 3 * signalled


def connections(client: conftest.Client) -> int:
    """Live connections in the daemon's pool: it keeps as many per host as the busiest
    moment needed (closing them after 10 idle minutes), and each holds a socket and a
    transport thread (and, through the ProxyCommand, a child process and its pipes)."""
    result = client.run("distsvc", "status", "--json")
    assert result.returncode == 0, result.stderr
    count: int = json.loads(result.stdout)["connections"]
    return count


def test_soak_leaves_fds_threads_children_and_memory_flat(
        daemon_client: conftest.Client) -> None:
    client = daemon_client
    proxied_hosts(client)
    pid = daemon_pid(client)
    # Warm-up: the pool holds its connections, paramiko and the relay their first buffers.
    mixed_day(client, "warm", 310, 5, 1, 2, 2)
    proc.steady(lambda: proc.fd_count(pid), SETTLE)
    baseline, pooled = proc.read(pid), connections(client)
    fds_before = proc.fd_targets(pid)

    ran = mixed_day(client, "soak", 320, SEQUENTIAL, BATCHES, TERMINAL, SIGNALLED)

    # What may remain beyond the warm-up's figures: the connections the pool holds on top
    # of those it held then, and a small constant.
    extra = max(0, connections(client) - pooled)
    proc.settle(lambda: proc.fd_count(pid), baseline.fds + FD_SLACK + FDS_PER_CONNECTION * extra,
                SETTLE)
    proc.settle(lambda: proc.thread_count(pid), baseline.threads + THREAD_SLACK + extra, SETTLE)
    proc.settle(lambda: len(proc.descendants(pid)), len(baseline.children) + extra, SETTLE)
    after, held = proc.read(pid), connections(client)
    extra = max(0, held - pooled)
    report = (f"after a warm-up: {baseline}, {pooled} pooled connections; after {ran} more "
              f"commands: {after}, {held} pooled connections")
    assert held <= MAX_POOLED, report
    assert after.fds <= baseline.fds + FD_SLACK + FDS_PER_CONNECTION * extra, (
        f"{report}; fds: before {fds_before}, after {proc.fd_targets(pid)}")
    assert after.threads <= baseline.threads + THREAD_SLACK + extra, report
    assert len(after.children) <= len(baseline.children) + extra, (
        f"{report}; children before {baseline.children}, after {after.children}")
    assert after.rss_kib <= baseline.rss_kib + RSS_SLACK_KIB, report


def test_a_1_gib_stream_leaves_the_daemons_memory_where_it_was(
        daemon_client: conftest.Client) -> None:
    client = daemon_client
    client.configure(hosts=client.bed.hosts[:1])
    pid = daemon_pid(client)
    sequential(client, 3, "warm")
    small = client.run("distsvc-run", "head", "-c", str(8 * MIB), "/dev/zero")
    assert (small.returncode, len(small.stdout)) == (0, 8 * MIB)
    before = proc.steady(lambda: proc.rss_kib(pid), 5)  # RSS moves by pages: a short wait

    process = client.popen("distsvc-run", "head", "-c", str(STREAM_BYTES), "/dev/zero",
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, bufsize=0)
    assert process.stdout is not None and process.stderr is not None
    buffer = bytearray(MIB)
    received = 0
    while count := process.stdout.readinto(buffer):
        received += count
    status = process.wait(120)
    error = process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    assert (status, received, error) == (0, STREAM_BYTES, b"")

    after = proc.settle(lambda: proc.rss_kib(pid), before + 10 * 1024, SETTLE)
    assert after <= before + 10 * 1024, (
        f"VmRSS {before / 1024:.1f} MiB before the 1 GiB stream, {after / 1024:.1f} MiB after")
