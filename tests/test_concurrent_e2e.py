"""A hundred `distsvc-run` at once through one daemon (issue 9): every one gets its own output
and status, and the daemon ends holding what it held after a warm-up of the same size. The
three hosts run OpenSSH's defaults (MaxSessions 10), so each carries about 33 commands over
several connections of the pool. Counts from /proc (tests/proc.py), never durations; the wall
time and the daemon's CPU per command are measured by bench/, not here.

Through a daemon only (DISTSVC_DAEMON=required): what is tested is the daemon.
"""

from __future__ import annotations

import conftest
import proc
import test_soak_e2e as soak

CLIENTS = 100
HOSTS = 3
# Per host, what CLIENTS commands at once need at MaxSessions 10 (and a session spare for
# the probes), not one connection per command.
MAX_POOLED = HOSTS * (CLIENTS // HOSTS // 9 + 2)


def test_a_hundred_commands_at_once_all_succeed_and_leave_the_daemon_flat(
        daemon_client: conftest.Client) -> None:
    client = daemon_client
    client.configure(hosts=client.bed.hosts[:HOSTS])
    pid = soak.daemon_pid(client)
    soak.at_once(client, CLIENTS, "warm")  # the pool makes the connections it needs
    proc.steady(lambda: proc.fd_count(pid), soak.SETTLE)
    baseline, pooled = proc.read(pid), soak.connections(client)

    soak.at_once(client, CLIENTS, "again")

    extra = max(0, soak.connections(client) - pooled)
    fds_allowed = baseline.fds + soak.FD_SLACK + soak.FDS_PER_CONNECTION * extra
    proc.settle(lambda: proc.fd_count(pid), fds_allowed, soak.SETTLE)
    proc.settle(lambda: proc.thread_count(pid), baseline.threads + soak.THREAD_SLACK + extra,
                soak.SETTLE)
    after, held = proc.read(pid), soak.connections(client)
    extra = max(0, held - pooled)
    report = (f"after {CLIENTS} at once: {baseline}, {pooled} pooled connections; after "
              f"{CLIENTS} more: {after}, {held} pooled connections")
    assert held <= MAX_POOLED, report
    assert after.fds <= baseline.fds + soak.FD_SLACK + soak.FDS_PER_CONNECTION * extra, report
    assert after.threads <= baseline.threads + soak.THREAD_SLACK + extra, report
    assert len(after.children) <= len(baseline.children), report
