"""Jobs on a host whose systemd user manager answers over SSH: the booted container with its
own sshd (tests/container.py `sshd`, PAM and logind as on a real host), beside the sshbed hosts
(no manager: the supervisor). The daemon is the sshbed client's, on this machine, so the job
goes over real SSH to a real `systemd-run --user`; each test proves the unit carried it by
looking at the unit inside the container.

cgroups are hybrid here, so the container's user manager has no controller delegated: limits
are refused unless --best-effort, and then recorded on the unit (enforcement is the VM's
business, tests/test_jobs_vm.py, for the same properties).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import conftest
import container
from helpers import pause_resume_and_wait, wait_for

Box = tuple[container.Container, container.SshHost]


@pytest.fixture(scope="module")
def sd(bed: Any) -> Iterator[Box]:
    key = bed.client_key.with_name(bed.client_key.name + ".pub").read_text()
    yield from container.sshd_fixture(authorized_key=key)


@pytest.fixture
def user(sd: Box, daemon_client: conftest.Client) -> conftest.Client:
    """The sshbed client with the container host as "box" first, then two sshbed hosts."""
    _, host = sd
    with open(daemon_client.home / ".ssh" / "known_hosts", "a") as known:
        known.write(host.known_hosts_line + "\n")
    daemon_client.configure(hosts=daemon_client.bed.hosts[:2], unknown=[
        {"name": "box", "address": host.address, "port": host.port, "user": host.user}])
    return daemon_client


def job(c: conftest.Client, *args: str, check: bool = True) -> Any:
    done = c.run("distsvc", "job", *args, cwd="/", timeout=90)
    if check and done.returncode != 0:
        raise AssertionError(f"job {args}: {done.returncode}: {done.stderr.decode()}")
    return done


def start(c: conftest.Client, *args: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(job(c, "start", "--json", "-w", "/", *args).stdout)["job"]
    return record


def unit(sd: Box, name: str, *props: str) -> dict[str, str]:
    c, _ = sd
    out = c.run_as_user(["systemctl", "--user", "show", name,
                         *[f"-p{p}" for p in props]]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_a_job_runs_as_a_unit_of_the_hosts_manager(sd: Box, user: conftest.Client) -> None:
    record = start(user, "--host", "box", "sh", "-c", "echo out; echo err >&2; sleep 1; exit 3")
    placement = record["placement"]
    assert placement["mode"] == "systemd" and placement["unit"].startswith("distsvc-job-")
    seen = unit(sd, placement["unit"], "ActiveState", "Slice", "RemainAfterExit")
    assert seen["Slice"] == "distsvc.slice" and seen["RemainAfterExit"] == "yes", seen
    assert job(user, "wait", record["id"], check=False).returncode == 3
    logs = job(user, "logs", record["id"])
    assert (logs.stdout, logs.stderr) == (b"out\n", b"err\n")
    # The unit is let go once the end is recorded; the status stays on the host.
    assert unit(sd, placement["unit"], "LoadState")["LoadState"] == "not-found"
    c, _ = sd
    assert c.read_file(placement["dir"] + "/status").startswith("systemd ")


def test_limits_are_refused_or_recorded_on_the_remote_unit(sd: Box,
                                                           user: conftest.Client) -> None:
    refused = job(user, "start", "-w", "/", "--host", "box", "--memory", "64M", "true",
                  check=False)
    assert refused.returncode == 4 and len(refused.stderr.splitlines()) == 1
    assert b"--memory cannot be enforced there" in refused.stderr
    record = start(user, "--host", "box", "--best-effort", "--memory", "64M", "--cpu", "50%",
                   "--tasks", "20", "--timeout", "1h", "sleep", "60")
    assert set(record["not_enforced"]) == {"memory", "cpu", "tasks"}
    seen = unit(sd, record["placement"]["unit"], "MemoryMax", "CPUQuotaPerSecUSec",
                "TasksMax", "RuntimeMaxUSec")
    assert seen == {"MemoryMax": str(64 << 20), "CPUQuotaPerSecUSec": "500ms",
                    "TasksMax": "20", "RuntimeMaxUSec": "1h"}, seen
    assert b"killed by SIGTERM" in job(user, "stop", record["id"]).stdout


def test_isolation_is_seen_from_inside_the_remote_unit(user: conftest.Client) -> None:
    record = start(user, "--host", "box", "--isolate", "pid,network", "sh", "-c",
                   "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; echo pid $$")
    assert record["isolation"] == ["pid", "network"]
    assert job(user, "wait", record["id"], check=False).returncode == 0
    out = job(user, "logs", record["id"]).stdout.decode().split("\n")
    assert out[0] == "lo" and out[1] == "pid 2", out  # only loopback; PID 2 under its init


def test_stop_ends_the_tree_in_the_unit(sd: Box, user: conftest.Client) -> None:
    c, _ = sd
    record = start(user, "--host", "box", "sh", "-c",
                   "sh -c 'sleep 3310 & sleep 3311' & sleep 3312")

    def sleeping() -> list[str]:
        out = c.run(["ps", "-e", "-o", "args="]).stdout
        return [line for line in out.splitlines() if line.startswith("sleep 331")]

    wait_for(lambda: len(sleeping()) == 3, 30, "the tree")
    assert b"killed by SIGTERM" in job(user, "stop", record["id"]).stdout
    wait_for(lambda: not sleeping(), 20, "the tree to end")


def test_pause_and_resume_on_the_hosts_manager(user: conftest.Client) -> None:
    record = start(user, "--host", "box", "sh", "-c",
                   "i=0; while [ $i -lt 100 ]; do echo $i; i=$((i+1)); sleep 0.05; done")
    paused = pause_resume_and_wait(lambda *a, **k: job(user, *a, **k), record["id"])
    assert paused["pause_method"] in ("freezer", "signals")  # v1 freezer: not for user units
    assert job(user, "logs", record["id"]).stdout.split()[-1] == b"99"


def test_best_places_on_either_kind_of_host_and_status_says_which(
        user: conftest.Client) -> None:
    records = [start(user, "sleep", "3") for _ in range(6)]
    modes = {r["placement"]["host"]: r["placement"]["mode"] for r in records}
    assert modes.get("box") == "systemd", modes
    assert set(modes.values()) == {"systemd", "supervisor"}, modes
    shown = job(user, "status", records[0]["id"]).stdout.decode()
    assert records[0]["placement"]["host"] in shown
    for r in records:
        assert job(user, "wait", r["id"], check=False).returncode == 0


def test_a_host_that_cannot_run_the_job_is_skipped_with_the_reason(
        sd: Box, user: conftest.Client) -> None:
    """h1 is the best host (its probe says so) but has no systemd user manager: a job that
    asks for network isolation goes to the box, and status says why not h1."""
    _, host = sd
    user.configure(hosts=user.bed.hosts[:1], probes={user.bed.hosts[0].name: "echo 0"},
                   unknown=[{"name": "box", "address": host.address, "port": host.port,
                             "user": host.user, "probe": "echo 5"}])
    h1 = user.bed.hosts[0].name
    record = start(user, "--isolate", "network", "true")
    assert record["placement"]["host"] == "box", record
    assert "network isolation cannot be had there" in record["skipped"][h1]
    assert h1 in job(user, "status", record["id"]).stdout.decode()
    everywhere = job(user, "start", "-w", "/", "--memory", "1G", "true", check=False)
    assert everywhere.returncode == 4 and len(everywhere.stderr.splitlines()) == 1, everywhere
    assert b"no host can run it" in everywhere.stderr


def test_an_unreachable_host_is_skipped_for_the_next(user: conftest.Client) -> None:
    """The best host by its last measurement is down when the job starts: the job goes to
    the next, and the host is marked unreachable for everyone, as distsvc-run does."""
    bed = user.bed
    h1 = bed.hosts[0]
    proxy = conftest.TcpProxy(h1.address, h1.port).__enter__()
    with open(user.home / ".ssh" / "known_hosts", "a") as known:
        known.write(f"[127.0.0.1]:{proxy.port} {h1.host_key}\n")
    user.configure(hosts=bed.hosts[1:2], probes={bed.hosts[1].name: "echo 5"}, unknown=[
        {"name": "via-proxy", "address": "127.0.0.1", "port": proxy.port, "user": bed.user,
         "probe": "echo 0"}])
    first = start(user, "true")  # measures both; via-proxy is best
    assert first["placement"]["host"] == "via-proxy"
    proxy.cut()
    second = start(user, "true")
    assert second["placement"]["host"] == bed.hosts[1].name, second
    rows = json.loads(user.run("distsvc", "hosts", "--json").stdout)["hosts"]
    assert {r["host"]: r["state"] for r in rows}["via-proxy"] != "up"
