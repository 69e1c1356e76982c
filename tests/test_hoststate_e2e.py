"""The daemon's host state in memory and the shared state file, against real OpenSSH servers
and a real daemon process: what processes without the daemon write (the scan service, a
daemon-less `distsvc-run`) the daemon's answers count, and what the daemon places reaches
the file those processes read."""

from __future__ import annotations

import json
import signal
from typing import Any

import conftest
import distsvc.state
import helpers

# Measured once and then kept: no request measures by itself (only what is due, below).
SETTINGS = "max_age = 3600\n"


def state_file(client: conftest.Client) -> distsvc.state.State:
    return distsvc.state.read(client.runtime / "distsvc")


def without_daemon(client: conftest.Client) -> dict[str, str]:
    """A process of this user that does not use the daemon (as with no daemon at all)."""
    return {"DISTSVC_DAEMON": "off"}


def best(client: conftest.Client) -> str:
    result = client.run("distsvc", "best")
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().strip()


def rows(client: conftest.Client, env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """`distsvc hosts --json` by host (through the daemon unless `env` says otherwise)."""
    result = client.run("distsvc", "hosts", "--json", env=env or {})
    assert result.returncode == 0, result.stderr
    return {r["host"]: r for r in json.loads(result.stdout)["hosts"]}


def scan_without_daemon_until(client: conftest.Client, host: str) -> None:
    """`distsvc scan` as the timer runs it where no daemon is seen, until it measured
    `host` (the busiest host is due once its measurement is 5 s old)."""
    def measured() -> bool:
        result = client.run("distsvc", "scan", env=without_daemon(client))
        assert result.returncode == 0, result.stderr
        return f"host={host}" in result.stderr.decode() and "through=process" in \
            result.stderr.decode()

    helpers.wait_for(measured, 60, f"a scan without the daemon measuring {host}")


def test_the_daemon_answers_with_what_processes_without_it_wrote(
        daemon_client: conftest.Client) -> None:
    client = daemon_client
    h1, h2 = client.bed.hosts[:2]
    client.configure(hosts=[h1, h2], probes={"h1": "echo 1", "h2": "echo 2"}, extra=SETTINGS)
    result = client.run("distsvc", "hosts", "--json", "--refresh")
    assert result.returncode == 0, result.stderr
    assert best(client) == "h1"  # within 5 s of the measurement: the daemon measures nothing

    # The scan service, with no daemon to go through, measures h2 anew into the file.
    client.configure(hosts=[h1, h2], probes={"h1": "echo 1", "h2": "echo 0.25"},
                     extra=SETTINGS)
    scan_without_daemon_until(client, "h2")
    assert best(client) == "h2"  # the daemon's answer comes from the scan's measurement

    # A command run without the daemon records its placement in the file; the daemon
    # counts it in the host table it answers with.
    before = rows(client)
    sleeper = client.popen("distsvc-run", "sleep", "60", env=without_daemon(client))
    try:
        helpers.wait_for(lambda: any(p.pid == sleeper.pid for p in state_file(client).placements),
                         30, "the daemon-less command's placement in the file")
        (placement,) = [p for p in state_file(client).placements if p.pid == sleeper.pid]
        after = rows(client)
        assert after[placement.host]["running"] == before[placement.host]["running"] + 1
    finally:
        sleeper.send_signal(signal.SIGTERM)
        sleeper.wait(30)


def test_what_the_daemon_places_reaches_the_file_for_processes_without_it(
        daemon_client: conftest.Client) -> None:
    client = daemon_client
    h1, h2 = client.bed.hosts[:2]
    client.configure(hosts=[h1, h2], probes={"h1": "echo 0.5", "h2": "echo 0.6"},
                     extra=SETTINGS)
    result = client.run("distsvc", "hosts", "--json", "--refresh")
    assert result.returncode == 0, result.stderr

    answered = best(client)  # an anonymous placement, counted for a minute
    helpers.wait_for(lambda: [p.host for p in state_file(client).placements if p.pid == 0]
                     == [answered], 30, "the daemon's placement for `best` in the file")

    sleeper = client.popen("distsvc-run", "sleep", "60")  # through the daemon
    try:
        helpers.wait_for(lambda: any(p.pid == sleeper.pid for p in state_file(client).placements),
                         30, "the daemon's placement for a command in the file")
        (placement,) = [p for p in state_file(client).placements if p.pid == sleeper.pid]
        # A client without the daemon counts both, from the file.
        direct = rows(client, env=without_daemon(client))
        expected = {"h1": 0, "h2": 0}
        expected[answered] += 1
        expected[placement.host] += 1
        assert {name: row["running"] for name, row in direct.items()} == expected
    finally:
        sleeper.send_signal(signal.SIGTERM)
        sleeper.wait(30)
    # Its end is released in the file too.
    helpers.wait_for(lambda: not any(p.pid == sleeper.pid
                                     for p in state_file(client).placements),
                     30, "the ended command's placement gone from the file")
