"""Jobs on SSH hosts without a systemd user manager (the sshbed hosts: the setsid supervisor),
and the queue, through a real daemon (the `daemon_client` fixture: DISTSVC_DAEMON=required, so
nothing passes through an in-process fallback) against real OpenSSH servers at their defaults.

Every test ends with no process of the hosts' user left (the fixture checks), so a supervisor
or a job that outlived its end fails the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import proc
from conftest import Client, TcpProxy, start_daemon
from helpers import client_job, pause_resume_and_wait, wait_for


def job(client: Client, *args: str, check: bool = True, timeout: float = 60
        ) -> subprocess.CompletedProcess[bytes]:
    return client_job(client, *args, check=check, timeout=timeout)


def start(client: Client, *args: str) -> dict[str, Any]:
    out = job(client, "start", "--json", *args).stdout
    record: dict[str, Any] = json.loads(out)["job"]
    return record


def status(client: Client, job_id: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(job(client, "status", "--json", job_id).stdout)["job"]
    return record


def wait(client: Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    job(client, "wait", job_id, check=False, timeout=timeout)
    return status(client, job_id)


def test_a_job_on_a_host_keeps_its_status_and_streams(daemon_client: Client) -> None:
    c = daemon_client
    c.configure()
    h1 = c.bed.hosts[0].name
    record = start(c, "--host", h1, "sh", "-c", "echo out; echo err >&2; pwd; exit 3")
    assert record["placement"]["kind"] == "ssh" and record["placement"]["host"] == h1
    assert record["placement"]["mode"] == "supervisor"
    done = job(c, "wait", record["id"], check=False)
    assert done.returncode == 3
    final = status(c, record["id"])
    assert final["state"] == "exited" and final["exit_code"] == 3
    logs = job(c, "logs", record["id"])
    assert logs.stdout == f"out\n{c.workdir}\n".encode() and logs.stderr == b"err\n"
    # The output stays on the host too, 0600 in a 0700 directory.
    directory = final["placement"]["dir"]
    listing = subprocess.run(["stat", "-c", "%a %n", directory, f"{directory}/stdout"],
                             capture_output=True, text=True, check=True).stdout.split("\n")
    assert listing[0].startswith("700 ") and listing[1].startswith("600 ")


def test_a_signal_and_a_missing_command(daemon_client: Client) -> None:
    c = daemon_client
    c.configure()
    h1 = c.bed.hosts[0].name
    record = start(c, "--host", h1, "sh", "-c", "kill -TERM $$")
    assert job(c, "wait", record["id"], check=False).returncode == 143
    missing = job(c, "start", "--host", h1, "no-such-command-x", check=False)
    assert missing.returncode == 127, missing.stderr
    assert b"command not found on" in missing.stderr and len(missing.stderr.splitlines()) == 1


def test_stop_ends_the_whole_tree_on_the_host(daemon_client: Client) -> None:
    c = daemon_client
    c.configure()
    record = start(c, "--host", c.bed.hosts[1].name, "sh", "-c",
                   "sh -c 'sleep 300 & sleep 301' & sleep 302; echo never")
    wait_for(lambda: c.bed.remote_processes("sleep 301"), 20, "the grandchild")
    stopped = job(c, "stop", record["id"])
    assert b"killed by SIGTERM" in stopped.stdout, stopped.stdout
    wait_for(lambda: not c.bed.remote_processes("sleep 30"), 20, "the tree to end")


def test_follow_is_lossless_from_byte_0(daemon_client: Client) -> None:
    c = daemon_client
    c.configure()
    record = start(c, "--host", c.bed.hosts[2].name, "sh", "-c",
                   "head -c 3000000 /dev/urandom > blob; cat blob; sleep 1; cat blob; "
                   "sha256sum blob >&2")
    follow = c.run("distsvc", "job", "logs", "--follow", "--stdout", record["id"], timeout=120)
    assert follow.returncode == 0, follow.stderr
    assert len(follow.stdout) == 6_000_000
    half = follow.stdout[:3_000_000]
    assert follow.stdout == half * 2
    digest = job(c, "logs", "--stderr", record["id"]).stderr.split()[0].decode()
    assert hashlib.sha256(half).hexdigest() == digest


def test_pause_and_resume_on_the_host(daemon_client: Client) -> None:
    c = daemon_client
    c.configure()
    record = start(c, "--host", c.bed.hosts[0].name, "sh", "-c",
                   "i=0; while [ $i -lt 200 ]; do echo $i; i=$((i+1)); sleep 0.05; done")
    paused = pause_resume_and_wait(lambda *a, **k: job(c, *a, **k), record["id"])
    assert paused["pause_method"] == "signals"  # no cgroup to freeze under a supervisor
    assert job(c, "logs", record["id"]).stdout.split()[-1] == b"199"


@pytest.mark.timeout(300)
def test_a_burst_spreads_over_the_hosts_and_slots_queue(daemon_client: Client) -> None:
    c = daemon_client
    hosts = c.bed.hosts[:3]
    c.configure(hosts, settings={h.name: {"slots": 2} for h in hosts})
    # A burst: twelve submitted at once (each job outlives the burst).
    submitting = [c.popen("distsvc", "job", "start", "--json", "sh", "-c", "sleep 15",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(12)]
    answers = [p.communicate(timeout=120) for p in submitting]
    assert all(p.returncode == 0 for p in submitting), (
        answers, (c.home / "daemon.log").read_text()[-3000:])
    ids = [json.loads(out)["job"]["id"] for out, _ in answers]
    records = [status(c, i) for i in ids]
    running = [r for r in records if r["state"] == "running"]
    queued = [r for r in records if r["state"] == "queued"]
    state = (c.runtime / "distsvc" / "state.json").read_text()
    assert len(running) == 6 and len(queued) == 6, ([r["state"] for r in records], state)
    assert sorted(r["placement"]["host"] for r in running) == sorted(
        [h.name for h in hosts] * 2)
    assert all("slot" in (r["reason"] or "") for r in queued)
    for i in ids:
        assert job(c, "wait", i, check=False, timeout=120).returncode == 0, (
            {k: v for k, v in status(c, i).items() if k in ("state", "reason", "placement")},
            (c.home / "daemon.log").read_text()[-5000:])
    hosts_used = {status(c, i)["placement"]["host"] for i in ids}
    assert hosts_used == {h.name for h in hosts}


def test_after_success_and_failure(daemon_client: Client) -> None:
    c = daemon_client
    c.configure()
    first = start(c, "sh", "-c", "sleep 1; exit 0")["id"]
    failing = start(c, "sh", "-c", "exit 4")["id"]
    good = start(c, "--after", first, "sh", "-c", "echo ran")
    bad = start(c, "--after", f"{first},{failing}", "sh", "-c", "echo never")
    assert good["state"] == "queued" and "waiting for job" in good["reason"]
    assert job(c, "wait", good["id"], check=False).returncode == 0
    assert job(c, "logs", good["id"]).stdout == b"ran\n"
    assert job(c, "wait", bad["id"], check=False).returncode == 125
    final = status(c, bad["id"])
    assert final["state"] == "dependency-failed" and f"job {failing} exited 4" in final["reason"]
    assert job(c, "logs", bad["id"]).stdout == b""


def test_retries_keep_each_attempt(daemon_client: Client) -> None:
    c = daemon_client
    c.configure()
    marker = c.bed.home / "attempts"
    record = start(c, "--retries", "2", "sh", "-c",
                   f"echo try >> {marker}; n=$(wc -l < {marker}); echo attempt $n; "
                   f"[ $n -ge 3 ]")
    assert job(c, "wait", record["id"], check=False, timeout=90).returncode == 0
    final = status(c, record["id"])
    assert final["attempt"] == 3 and [a["state"] for a in final["attempts"]] == ["exited"] * 2
    assert [a["exit_code"] for a in final["attempts"]] == [1, 1]
    assert job(c, "logs", record["id"]).stdout == b"attempt 3\n"
    assert job(c, "logs", "--attempt", "1", record["id"]).stdout == b"attempt 1\n"


@pytest.fixture
def proxy(daemon_client: Client) -> Iterator[TcpProxy]:
    """The client's only host, "via-proxy": h1 behind a relay the test can cut."""
    c = daemon_client
    host = c.bed.hosts[0]
    with TcpProxy(host.address, host.port) as relay:
        with open(c.home / ".ssh" / "known_hosts", "a") as known:
            known.write(f"[127.0.0.1]:{relay.port} {host.host_key}\n")
        c.configure([], unknown=[{"name": "via-proxy", "address": "127.0.0.1",
                                  "port": relay.port, "user": c.bed.user}])
        yield relay


@pytest.mark.timeout(300)
def test_a_host_that_goes_down_shows_unknown_then_its_true_state(
        daemon_client: Client, proxy: TcpProxy) -> None:
    c = daemon_client
    record = start(c, "sh", "-c", "i=0; while [ $i -lt 80 ]; do echo $i; i=$((i+1)); "
                   "sleep 0.1; done; exit 5")
    assert record["placement"]["host"] == "via-proxy"
    waiting = c.popen("distsvc", "job", "wait", record["id"], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: job(c, "logs", record["id"]).stdout, 20, "first output")
        proxy.cut()  # the host is gone: its connections and new ones

        def down() -> str | None:
            said = job(c, "status", record["id"]).stdout.decode()
            return said if "down since" in said else None

        said = wait_for(down, 60, "the host seen down")
        assert "unknown (host via-proxy down since" in said
        assert status(c, record["id"])["state"] == "running"  # not failed, not final
        assert waiting.poll() is None  # `wait` waits on
        with TcpProxy(*proxy.target, listen_port=proxy.port):  # the host is back
            assert waiting.wait(120) == 5
    finally:
        if waiting.poll() is None:
            waiting.kill()
        final = status(c, record["id"])
    assert final["state"] == "exited" and final["host_down_since"] is None
    lines = job(c, "logs", record["id"]).stdout.split()
    assert lines == [str(i).encode() for i in range(80)]


@pytest.mark.timeout(300)
def test_follow_resumes_over_a_cut_connection_without_loss(
        daemon_client: Client, proxy: TcpProxy) -> None:
    c = daemon_client
    record = start(c, "sh", "-c", "head -c 12000000 /dev/urandom > blob2; "
                   "for i in 1 2 3 4 5 6; do head -c 2000000 blob2 | tail -c 1000000; "
                   "sleep 0.5; done; cat blob2; sha256sum blob2 >&2")
    follow = c.popen("distsvc", "job", "logs", "--follow", "--stdout", record["id"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.0)
    for _ in range(3):
        proxy.sever()  # mid-stream: the daemon's connection drops, the network stays
        time.sleep(0.7)
    out, err = follow.communicate(timeout=180)
    assert follow.returncode == 0, err
    assert len(out) == 6_000_000 + 12_000_000
    digest = job(c, "logs", "--stderr", record["id"]).stderr.split()[0].decode()
    assert hashlib.sha256(out[6_000_000:]).hexdigest() == digest
    assert out[:1_000_000] == out[6_000_000 + 1_000_000:6_000_000 + 2_000_000]


def _daemon_pid(c: Client) -> int:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"daemon" in argv and f"HOME={c.home}".encode() in environ:
            return int(entry)
    raise AssertionError("no daemon")


@pytest.mark.timeout(300)
def test_remote_jobs_outlive_the_local_daemon(daemon_client: Client) -> None:
    c = daemon_client
    c.configure()
    h2 = c.bed.hosts[1].name
    long = start(c, "--host", h2, "sh", "-c", "sleep 4; echo long done; exit 6")
    short = start(c, "--host", h2, "sh", "-c", "sleep 1; echo short done")
    os.kill(_daemon_pid(c), signal.SIGKILL)
    time.sleep(2)  # the short job ends while no daemon runs
    (c.runtime / "distsvc" / "distsvc.sock").unlink()  # left by the killed daemon
    daemon = start_daemon(c)
    try:
        assert status(c, short["id"])["state"] == "exited"
        assert status(c, long["id"])["state"] == "running"
        rows = json.loads(c.run("distsvc", "hosts", "--json").stdout)["hosts"]
        assert {r["host"]: r["jobs"] for r in rows}[h2] == [long["id"]]  # its slot held again
        assert job(c, "wait", long["id"], check=False).returncode == 6
        assert job(c, "logs", long["id"]).stdout == b"long done\n"
        assert job(c, "logs", short["id"]).stdout == b"short done\n"
    finally:
        daemon.terminate()
        daemon.wait(20)


def test_hosts_and_list_show_the_jobs_of_a_host(daemon_client: Client) -> None:
    c = daemon_client
    c.configure()
    h3 = c.bed.hosts[2].name
    record = start(c, "--host", h3, "sleep", "60")
    rows = json.loads(c.run("distsvc", "hosts", "--json").stdout)["hosts"]
    assert {r["host"]: r["jobs"] for r in rows}[h3] == [record["id"]]
    listed = json.loads(job(c, "list", "--json", "--host", h3).stdout)["jobs"]
    assert [j["id"] for j in listed] == [record["id"]]
    assert json.loads(job(c, "list", "--json", "--host", c.bed.hosts[0].name).stdout
                      )["jobs"] == []
    job(c, "stop", record["id"])


def test_wait_for_all_or_any(daemon_client: Client) -> None:
    c = daemon_client
    c.configure()
    quick = start(c, "sh", "-c", "sleep 0.5")["id"]
    slow = start(c, "sh", "-c", "sleep 4; exit 3")["id"]
    assert job(c, "wait", "--any", slow, quick, check=False).returncode == 0
    assert status(c, slow)["state"] == "running"
    assert job(c, "wait", quick, slow, check=False).returncode == 3


def test_a_group_runs_at_most_its_limit(daemon_client: Client) -> None:
    c = daemon_client
    c.configure(extra="[jobs.groups]\nserial = 1\n")
    first = start(c, "--group", "serial", "sh", "-c", "sleep 2")
    second = start(c, "--group", "serial", "sh", "-c", "sleep 1")
    other = start(c, "sh", "-c", "true")
    assert first["state"] == "running" and other["state"] == "running"
    assert second["state"] == "queued" and "group serial" in second["reason"]
    assert job(c, "wait", first["id"], second["id"], check=False).returncode == 0
    assert status(c, second["id"])["started"] >= status(c, first["id"])["ended"] - 0.5


def test_retention_removes_the_files_on_the_host_too(daemon_client: Client) -> None:
    c = daemon_client
    c.configure(extra="[jobs]\nkeep = 1\n")
    ids = []
    for n in range(3):
        ids.append(start(c, "--host", c.bed.hosts[0].name, "echo", str(n))["id"])
        job(c, "wait", ids[-1])
    kept = json.loads(job(c, "list", "--json").stdout)["jobs"]
    assert [j["id"] for j in kept] == [ids[-1]]
    origin = (c.home / ".local/state/distsvc/jobs/origin").read_text().strip()
    on_host = c.bed.home / ".local/state/distsvc/jobs-from" / origin
    assert sorted(p.name for p in on_host.iterdir()) == [f"{ids[-1]}.1"]


def test_output_retention_applies_here_and_on_the_host(daemon_client: Client) -> None:
    c = daemon_client
    c.configure(extra='[jobs]\nmax_output = "1K"\n')
    record = start(c, "--host", c.bed.hosts[1].name, "sh", "-c",
                   "i=0; while [ $i -lt 1000 ]; do echo line$i; i=$((i+1)); done")
    assert job(c, "wait", record["id"], check=False).returncode == 0
    final = status(c, record["id"])
    here = job(c, "logs", record["id"]).stdout
    assert here.startswith(b"[distsvc: ") and here.endswith(b"line999\n")
    assert final["output_cut"]["stdout"] == len(b"".join(
        f"line{i}\n".encode() for i in range(1000))) - 1024
    there = Path(final["placement"]["dir"], "stdout").read_bytes()
    assert len(there) == 1024 and here.endswith(there)


@pytest.mark.timeout(400)
def test_many_remote_jobs_leave_the_daemon_flat(daemon_client: Client) -> None:
    """60 short jobs over 3 hosts, twice: after each round the daemon's fds, threads and
    child processes are back where they were (host watchers and the queue thread end, every
    session's channel is closed), and no process is left on the hosts (the fixture)."""
    c = daemon_client
    c.configure(c.bed.hosts[:3])
    pid = _daemon_pid(c)

    def round_of(n: int) -> None:
        submitting = [c.popen("distsvc", "job", "start", "sh", "-c", "echo $$",
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                      for _ in range(n)]
        ids = [p.communicate(timeout=120)[0].decode().strip() for p in submitting]
        assert all(p.returncode == 0 for p in submitting)
        assert job(c, "wait", *ids, check=False, timeout=180).returncode == 0
        assert all(job(c, "logs", i).stdout.strip().isdigit() for i in ids)

    round_of(20)  # warm: connections made, hosts probed
    fds = proc.steady(lambda: proc.fd_count(pid), 20)
    threads = proc.steady(lambda: proc.thread_count(pid), 20)
    for _ in range(2):
        round_of(30)
        assert proc.settle(lambda: proc.fd_count(pid), fds, 20) <= fds
        assert proc.settle(lambda: proc.thread_count(pid), threads, 20) <= threads
    assert proc.descendants(pid) == []
