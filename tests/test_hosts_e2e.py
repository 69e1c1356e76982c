"""Measuring and choosing hosts against real OpenSSH servers."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

import conftest
import helpers

# The address the command saw itself connected to, i.e. which host ran it.
WHERE = ["sh", "-c", 'set -- $SSH_CONNECTION; echo "$3"']


def address_of(client: conftest.Client, name: str) -> str:
    return next(h.address for h in client.bed.hosts if h.name == name)


def hosts_json(client: conftest.Client, *args: str) -> list[dict]:
    result = client.run("distsvc", "hosts", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["hosts"]  # type: ignore[no-any-return]


def test_runs_on_the_least_loaded_host(client: conftest.Client) -> None:
    client.configure(probes={"h1": "echo 0.9", "h2": "echo 0.1", "h3": "echo 0.5",
                             "h4": "echo 0.7"})
    result = client.run("distsvc-run", *WHERE)
    assert result.stdout.decode().strip() == address_of(client, "h2"), result.stderr


def test_load_is_per_cpu_and_pressure_counts(client: conftest.Client) -> None:
    client.configure(hosts=client.bed.hosts[:3], probes={
        "h1": "echo load1=4 cpus=2",  # 2.0 per CPU
        "h2": "echo load1=6 cpus=8 psi=50",  # 0.75 + 0.5
        "h3": "echo load1=1 cpus=1 psi=90",  # 1.0 + 0.9
    })
    rows = hosts_json(client)
    assert [r["host"] for r in rows] == ["h2", "h3", "h1"]
    assert rows[0]["score"] == 1.25


def test_simultaneous_starts_spread_over_hosts(client: conftest.Client) -> None:
    client.configure(probes={h.name: "echo load1=0 cpus=1" for h in client.bed.hosts})
    processes = [client.popen("distsvc-run", "sh", "-c",
                              'set -- $SSH_CONNECTION; echo "$3"; sleep 2',
                              stdout=subprocess.PIPE) for _ in range(8)]
    where = [p.communicate(timeout=60)[0].decode().strip() for p in processes]
    counts = {address: where.count(address) for address in set(where)}
    assert len(counts) == 4 and max(counts.values()) == 2, counts


def test_default_probe_reports_the_hosts_real_figures(client: conftest.Client) -> None:
    client.configure(hosts=client.bed.hosts[:1])
    (row,) = hosts_json(client)
    assert row["state"] == "up" and row["cpus"] >= 1 and row["load1"] >= 0
    assert row["mem_available_kb"] > 0 and row["access_ms"] > 0
    with open("/proc/pressure/cpu") as psi:
        assert psi.read() and row["cpu_pressure"] is not None


def test_junk_from_rc_files_is_ignored(client: conftest.Client) -> None:
    bed = client.bed
    rc = bed.write_home_file(".ssh/rc", 'echo "Welcome! load1=banana"; echo 12 monkeys\n')
    bashrc = bed.write_home_file(".bashrc", "echo bashrc says hello; echo load1=\n")
    try:
        client.configure(hosts=bed.hosts[:1])
        (row,) = hosts_json(client)
        assert row["state"] == "up" and row["load1"] is not None, row
        client.configure(hosts=bed.hosts[:1], probes={"h1": "echo 0.25; echo trailing junk"})
        (row,) = hosts_json(client, "--refresh")
        assert row["metric"] == 0.25
    finally:
        rc.unlink()
        bashrc.unlink()


def test_hung_host_is_unknown_after_the_timeout_and_never_chosen(
        client: conftest.Client) -> None:
    bed = client.bed
    client.configure(hosts=bed.hosts[:2], probes={"h1": "echo 0", "h2": "echo 5"})
    with bed.hosts[0].hung():
        rows = {r["host"]: r for r in hosts_json(client)}
        assert rows["h1"]["state"] == "unknown"
        assert "no answer within 2 s" in rows["h1"]["error"]
        result = client.run("distsvc-run", *WHERE)
        assert result.stdout.decode().strip() == bed.hosts[1].address


def test_refused_connection_is_unknown(client: conftest.Client) -> None:
    client.configure(hosts=client.bed.hosts[:1], unknown=[
        {"name": "dead", "address": "127.0.0.99", "port": 9, "user": client.bed.user}])
    rows = {r["host"]: r for r in hosts_json(client)}
    assert rows["dead"]["state"] == "unknown" and "refused" in rows["dead"]["error"].lower()
    assert rows["h1"]["state"] == "up"


def test_falls_back_to_the_next_host_when_the_chosen_one_fails(
        client: conftest.Client) -> None:
    bed = client.bed
    client.configure(hosts=bed.hosts[:3], probes={"h1": "echo 0.9", "h2": "echo 0.1",
                                                  "h3": "echo 0.5"})
    hosts_json(client)  # measured now: h2 is best while the measurements are fresh
    bed.hosts[1].stop()
    try:
        result = client.run("distsvc-run", *WHERE)
    finally:
        bed.hosts[1].start()
    assert result.returncode == 0
    assert result.stdout.decode().strip() == bed.hosts[2].address
    assert b"h2:" in result.stderr and b"trying the next host" in result.stderr
    rows = {r["host"]: r for r in hosts_json(client)}
    assert rows["h2"]["state"] == "unknown"  # remembered until the next measurement


def test_no_reachable_host_is_status_255_with_the_reasons(client: conftest.Client) -> None:
    client.configure(hosts=[], unknown=[
        {"name": "dead", "address": "127.0.0.99", "port": 9, "user": client.bed.user}])
    result = client.run("distsvc-run", "true")
    assert result.returncode == 255
    assert result.stderr.decode().startswith("distsvc: no reachable host: dead (")
    assert len(result.stderr.splitlines()) == 1


def test_slot_limit_makes_a_job_wait_for_a_free_slot(client: conftest.Client) -> None:
    client.configure(hosts=client.bed.hosts[:1], settings={"h1": {"slots": 1}})
    first = client.popen("distsvc-run", "sh", "-c", "sleep 2 # 1101.5")
    helpers.wait_for(lambda: client.bed.remote_processes("1101.5"), 20, "the first job")
    started = time.monotonic()
    second = client.run("distsvc-run", "true")
    waited = time.monotonic() - started
    assert first.wait(30) == 0
    assert second.returncode == 0
    assert b"slot limit; waiting" in second.stderr
    assert waited > 0.5  # it did wait (a lower bound only; never an upper one)


def test_hosts_table(client: conftest.Client) -> None:
    client.configure(hosts=client.bed.hosts[:2], probes={"h2": "echo 0.5"})
    result = client.run("distsvc", "hosts")
    lines = result.stdout.decode().splitlines()
    assert lines[0].split()[:3] == ["HOST", "STATE", "LOAD/CPU"]
    assert {lines[1].split()[0], lines[2].split()[0]} == {"h1", "h2"}
    assert "custom probe" in lines[-1]


def test_distsvc_hosts_env_overrides_the_file(client: conftest.Client) -> None:
    client.configure(hosts=client.bed.hosts[:1])
    h2 = client.bed.hosts[1]
    (client.home / ".ssh" / "config").write_text(f"Host {h2.address}\n  User {client.bed.user}\n")
    result = client.run("distsvc", "hosts", "--json",
                        env={"DISTSVC_HOSTS": f" {h2.address}:{h2.port} ; "})
    rows = json.loads(result.stdout)["hosts"]
    assert [r["host"] for r in rows] == [h2.address] and rows[0]["state"] == "up"


def test_a_restarted_host_is_used_again(client: conftest.Client) -> None:
    """Through a daemon, the warm connection dies with the server: the next command gets a
    fresh one to the same host instead of falling back or failing."""
    bed = client.bed
    client.configure(hosts=bed.hosts[:2], probes={"h1": "echo 0.1", "h2": "echo 0.9"})
    assert client.run("distsvc-run", *WHERE).stdout.decode().strip() == bed.hosts[0].address
    bed.hosts[0].stop()
    bed.hosts[0].start()
    result = client.run("distsvc-run", *WHERE)
    assert result.stdout.decode().strip() == bed.hosts[0].address, result.stderr
    assert b"trying the next host" not in result.stderr


@pytest.mark.parametrize("kind", ["unknown", "changed"])
def test_a_refused_host_key_is_said_even_with_quiet_and_the_host_shown_refused(
        client: conftest.Client, kind: str) -> None:
    """The best host's key is refused: the command runs on the next host, and stderr says
    which host was left out and how to fix it, although -q silences every other notice."""
    bed = client.bed
    h1, h2 = bed.hosts[0], bed.hosts[1]
    known = h2.known_hosts_line + "\n"
    if kind == "changed":  # h1's address with h3's key: what a man in the middle would show
        known += f"[{h1.address}]:{h1.port} {bed.hosts[2].host_key}\n"
    (client.home / ".ssh" / "known_hosts").write_text(known)
    client.configure(hosts=[h1, h2], probes={"h1": "echo 0.1", "h2": "echo 0.9"})
    expected = ("host key not known", "--accept-new") if kind == "unknown" else (
        "host key CHANGED", "ssh-keygen -R")
    for _ in range(2):  # every command says it, not only the one that probed
        result = client.run("distsvc-run", "-q", *WHERE)
        assert (result.returncode, result.stdout.decode().strip()) == (0, h2.address)
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("distsvc: h1 not used: "), lines
        assert all(part in lines[0] for part in expected), lines
    rows = hosts_json(client)
    assert [r["host"] for r in rows] == ["h2", "h1"]
    assert rows[1]["state"] == "refused" and expected[0] in rows[1]["error"]
    table = client.run("distsvc", "hosts").stdout.decode().splitlines()
    assert table[2].split()[:2] == ["h1", "refused"] and expected[0] in table[2]
