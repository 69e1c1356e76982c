"""`--json` of every command that prints data, from the real commands against real OpenSSH
servers (tests/sshbed.py), without and through a daemon, each document checked against its
schema in docs/json.md (tests/jsondoc.py). Jobs go to the bed's hosts through the daemon
(the setsid supervisor there: the same records as a systemd unit's). With
DISTSVC_JSON_EXAMPLES=DIR, each document is also written there (docs/json.md's examples)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsondoc
from conftest import Client
from helpers import wait_for

# The host's own address, third word of $SSH_CONNECTION: a status of its own per host.
BY_HOST = 'set -- $SSH_CONNECTION; echo "out $3"; echo "err $3" >&2; [ "$3" = 127.0.0.3 ]'


def document(client: Client, command: str, *args: str, status: int = 0) -> dict[str, Any]:
    """`distsvc ARGS` (with --json among them): its document, checked against `command`'s
    schema, stderr free of tracebacks."""
    done = client.run("distsvc", *args)
    assert done.returncode == status, (args, done.returncode, done.stderr)
    assert b"Traceback" not in done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    assert data["version"] == 1 and data["command"] == command
    assert jsondoc.problems(data, command) == [], (command, data)
    examples = os.environ.get("DISTSVC_JSON_EXAMPLES")
    if examples:
        name = command.replace(" ", "_").replace("-", "") + f"-{client.mode}.json"
        (Path(examples) / name).write_text(json.dumps(data, indent=1) + "\n")
    return data


def test_the_host_commands(client: Client) -> None:
    hosts = client.bed.hosts[:2]
    client.configure(hosts)
    rows = document(client, "hosts", "hosts", "--refresh", "--json")["hosts"]
    assert sorted(r["host"] for r in rows) == sorted(h.name for h in hosts)
    assert {r["state"] for r in rows} == {"up"}
    best = document(client, "best", "best", "--json")["host"]
    assert best in {h.name for h in hosts}
    ran = document(client, "run --all", "run", "--all", "--json", "sh", "-c", BY_HOST,
                   status=1)
    by_host = {r["host"]: r for r in ran["hosts"]}
    for host in hosts:
        mine = by_host[host.name]
        assert mine["stdout"] == f"out {host.address}\n"
        assert mine["stderr"] == f"err {host.address}\n"
        assert mine["status"] == (0 if host.address == "127.0.0.3" else 1)
        assert mine["error"] is None and mine["stdout_cut"] == mine["stderr_cut"] == 0
    assert ran["interrupted"] is None
    purged = document(client, "purge", "purge", "--json")
    assert purged["killed"] is False
    assert sorted(h["host"] for h in purged["hosts"]) == sorted(h.name for h in hosts)
    checked = document(client, "config check", "config", "check", "--json")
    assert [h["name"] for h in checked["config"]["hosts"]] == [h.name for h in hosts]
    assert client.run("distsvc", "env", "set", "GREETING", "hé llo").returncode == 0
    assert document(client, "env print", "env", "print", "--json")["variables"] == {
        "GREETING": "hé llo"}
    status = document(client, "status", "status", "--json",
                      status=3 if client.mode == "direct" else 0)
    assert status["running"] is (client.mode == "daemon")
    if client.mode == "daemon":
        assert status["daemon_version"] and status["hosts_configured"] == 2


def test_run_all_output_is_bounded_and_an_unreachable_host_is_its_own_entry(
        client: Client) -> None:
    host = client.bed.hosts[0]
    client.configure([host], unknown=[{"name": "nowhere", "address": "127.0.0.1",
                                       "port": 1}])
    ran = document(client, "run --all", "run", "--all", "--json", "sh", "-c",
                   "head -c 70000 /dev/zero | tr '\\0' a", status=255)
    by_host = {r["host"]: r for r in ran["hosts"]}
    assert by_host[host.name]["stdout"] == "a" * 65536
    assert by_host[host.name]["stdout_cut"] == 70000 - 65536
    assert by_host["nowhere"]["status"] == 255 and by_host["nowhere"]["error"]


def test_a_failure_with_json_is_a_line_on_stderr_and_nothing_on_stdout(
        client: Client) -> None:
    client.configure([])
    for args, status in ((["best", "--json"], 255), (["job", "logs", "--json", "1"], 2),
                         (["run", "--json", "true"], 2)):
        done = client.run("distsvc", *args)
        assert (done.returncode, done.stdout) == (status, b""), (args, done)
        assert done.stderr.count(b"\n") == 1 and done.stderr.startswith(b"distsvc"), done


def job(client: Client, verb: str, *args: str, status: int = 0) -> dict[str, Any]:
    return document(client, f"job {verb}", "job", verb, "--json", *args, status=status)


def test_the_job_commands(daemon_client: Client) -> None:
    client = daemon_client
    host = client.bed.hosts[0]
    client.configure([host])
    started = job(client, "start", "--host", host.name, "sleep", "300")["job"]
    job_id = started["id"]
    wait_for(lambda: job(client, "status", job_id)["job"]["state"] == "running", 60,
             "the job to run")
    assert [j["id"] for j in job(client, "list")["jobs"]] == [job_id]
    assert job(client, "pause", job_id)["job"]["paused"] is True
    resumed = job(client, "resume", job_id)
    assert resumed["job"]["paused"] is False and isinstance(resumed["method"], str)
    assert job(client, "stop", "--grace", "5", job_id)["job"]["id"] == job_id
    waited = job(client, "wait", job_id, status=143)
    assert waited["exit_status"] == 143 and waited["jobs"][0]["state"] == "killed"
    short = job(client, "start", "--host", host.name, "true")["job"]["id"]
    assert job(client, "wait", short)["exit_status"] == 0
    assert job(client, "remove", job_id)["removed"] == [job_id]
    assert job(client, "clean")["removed"] == [short]
    assert job(client, "list")["jobs"] == []


def test_purge_lists_and_kills_a_stray(client: Client) -> None:
    client.configure(client.bed.hosts[:1])
    # Escaped from its session: neither the wrapper nor the watcher ends it (as in
    # test_commands_e2e), so purge finds it.
    started = client.run("distsvc-run", "sh", "-c",
                         "setsid sleep 1202.5 </dev/null >/dev/null 2>&1 &")
    assert started.returncode == 0
    wait_for(lambda: client.bed.remote_processes("1202.5"), 10, "the stray")
    listed = document(client, "purge", "purge", "--json")
    [host] = listed["hosts"]
    assert host["error"] is None
    # Whatever else the bed's user has there (a zombie a moment) is listed too.
    [stray] = [p for p in host["processes"] if p["command"] == "sleep 1202.5"]
    assert isinstance(stray["pid"], int)
    killed = document(client, "purge", "purge", "--kill", "--json")
    assert killed["killed"] is True
    assert stray in killed["hosts"][0]["processes"]
    wait_for(lambda: not client.bed.remote_processes("1202.5"), 5, "the stray to end")
