"""Local jobs end to end: `distsvc job ...` as a user of a real systemd user manager.

In the booted container (tests/container.py): the daemon is started by its socket unit, as
installed, and each job is a transient unit of the test user's manager. cgroups here are
hybrid, so limits can only be recorded (`--best-effort`); their enforcement is proven in the
VM bed (test_jobs_vm.py). Every test's jobs are its own (IDs from its own `start`).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import container
import helpers

PROJECT = Path(__file__).resolve().parents[1]
UNITS = ("distsvc.socket", "distsvc.service")


@pytest.fixture(scope="module")
def box() -> Iterator[container.Container]:
    reason = container.can_boot()
    if reason:
        pytest.fail(reason)
    with container.booted() as c:
        c.run(["ln", "-sf", str(container.VENV_BIN / "distsvc"), "/usr/bin/distsvc"])
        for unit in UNITS:
            c.write_file(f"/usr/lib/systemd/user/{unit}",
                         (PROJECT / "systemd" / unit).read_text())
        c.run_as_user(["systemctl", "--user", "daemon-reload"])
        c.run_as_user(["systemctl", "--user", "enable", "--now", "distsvc.socket"])
        yield c


def job(bed: Any, *args: str, check: bool = True, timeout: float = 60) -> Any:
    return helpers.job(bed, *args, check=check, timeout=timeout)


start = helpers.start_job
status = helpers.job_status




def processes(c: container.Container, needle: str) -> list[str]:
    out = c.run(["ps", "-eo", "pid=,stat=,args="]).stdout
    return [line for line in out.splitlines() if needle in line and "ps -eo" not in line]


def units(c: container.Container) -> list[str]:
    out = c.run_as_user(["systemctl", "--user", "list-units", "--all", "--plain",
                         "--no-legend", "distsvc-job-*"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def test_a_job_keeps_its_status_and_both_streams(box: container.Container) -> None:
    job_id = start(box, "--isolate", "none", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert job(box, "wait", job_id, check=False).returncode == 3
    record = status(box, job_id)
    assert record["state"] == "exited" and record["exit_code"] == 3
    assert record["placement"]["unit"] == f"distsvc-job-{job_id}.service"
    assert job(box, "logs", "--stdout", job_id).stdout == "out\n"
    assert job(box, "logs", "--stderr", job_id).stderr == "err\n"
    both = job(box, "logs", job_id)
    assert (both.stdout, both.stderr) == ("out\n", "err\n")
    lines = start(box, "sh", "-c", "printf 'a\\nb\\nc\\n'")
    job(box, "wait", lines)
    assert job(box, "logs", "--tail", "2", lines).stdout == "b\nc\n"
    assert job(box, "logs", "-f", "-n", "1", lines).stdout == "c\n"
    listed = json.loads(job(box, "list", "--json").stdout)["jobs"]
    assert listed[0]["id"] == lines
    listed = listed[1:]
    assert listed[0]["id"] == job_id  # newest first
    text = job(box, "status", job_id).stdout
    assert "exited 3" in text and "echo out" in text
    # The unit went once the record was written.
    helpers.wait_for(lambda: f"distsvc-job-{job_id}.service" not in units(box), 10,
                     "the unit to go")


def test_a_fast_true_reads_as_success_and_a_signal_as_a_signal(
        box: container.Container) -> None:
    fast = start(box, "true")
    killed = start(box, "sh", "-c", "kill -TERM $$")
    assert job(box, "wait", fast, check=False).returncode == 0
    assert status(box, fast)["state"] == "exited"
    assert job(box, "wait", killed, check=False).returncode == 143
    record = status(box, killed)
    assert record["state"] == "killed" and record["signal"] == 15


def test_stop_ends_a_double_forked_grandchild(box: container.Container) -> None:
    job_id = start(box, "sh", "-c", "(setsid sleep 3001 &); sleep 3002")
    helpers.wait_for(lambda: processes(box, "sleep 3001") and processes(box, "sleep 3002"), 20,
               "the tree")
    out = job(box, "stop", "--grace", "2", job_id).stdout
    assert f"job {job_id}:" in out
    helpers.wait_for(lambda: not processes(box, "sleep 300"), 20, "the tree to end")
    assert status(box, job_id)["state"] in ("killed", "exited")
    again = job(box, "stop", job_id, check=False)
    assert again.returncode == 4 and "ended already" in again.stderr


def test_pause_and_resume_the_whole_tree(box: container.Container) -> None:
    script = ("sh -c 'sh -c \"while :; do echo tick; sleep 0.1; done\"' & "
              "while :; do :; done")
    job_id = start(box, "sh", "-c", script)
    helpers.wait_for(lambda: "tick" in job(box, "logs", "--stdout", job_id).stdout, 20, "output")
    answer = json.loads(job(box, "pause", "--json", job_id).stdout)
    assert answer["job"]["paused"] is True
    method = answer["job"]["pause_method"]
    assert method in ("freezer", "signals")
    time.sleep(0.5)
    before = job(box, "logs", "--stdout", job_id).stdout
    cpu_before = status(box, job_id)["cpu_ns"]
    time.sleep(1.0)
    assert job(box, "logs", "--stdout", job_id).stdout == before  # nothing ran
    cpu_after = status(box, job_id)["cpu_ns"]
    if cpu_before is not None and cpu_after is not None:
        assert cpu_after - cpu_before < 50_000_000  # a busy loop would have used ~1 s
    resumed = job(box, "resume", job_id).stdout
    assert method in resumed
    helpers.wait_for(lambda: len(job(box, "logs", "--stdout", job_id).stdout) > len(before), 20,
               "output after resume")
    job(box, "stop", "--grace", "1", job_id)


def test_jobs_outlive_a_daemon_restart(box: container.Container) -> None:
    quick = start(box, "sh", "-c", "sleep 3; exit 7")
    slow = start(box, "sleep", "3003")
    box.run_as_user(["systemctl", "--user", "kill", "-s", "KILL", "distsvc.service"])
    time.sleep(4)  # the quick one ends while no daemon runs
    assert processes(box, "sleep 3003")
    assert job(box, "wait", quick, check=False).returncode == 7  # the socket starts a daemon
    assert status(box, quick)["state"] == "exited"
    assert status(box, slow)["state"] == "running"
    job(box, "stop", "--grace", "1", slow)


def test_wait_goes_on_across_a_daemon_restart(box: container.Container) -> None:
    job_id = start(box, "sh", "-c", "sleep 4; exit 5")
    waiter = box.popen_as_user(["distsvc", "job", "wait", job_id],
                               env={"DISTSVC_DAEMON": "required"})
    time.sleep(1)
    box.run_as_user(["systemctl", "--user", "restart", "distsvc.service"])
    assert waiter.wait(60) == 5


def test_followers_get_every_byte(box: container.Container) -> None:
    writer = ("import os, sys, time\n"
              "time.sleep(2)\n"
              "r = __import__('random').Random(7)\n"
              "for _ in range(50):\n"
              "    sys.stdout.buffer.write(r.randbytes(1 << 20)); sys.stdout.flush()\n")
    job_id = start(box, "python3", "-c", writer)
    follow = ["sh", "-c", f"distsvc job logs --follow --stdout {job_id} | sha256sum"]
    env = {"DISTSVC_DAEMON": "required"}
    followers = [box.popen_as_user(follow, env=env, stdout=-1, text=True) for _ in range(8)]
    stopped = box.popen_as_user(follow, env=env, stdout=-1, text=True)
    stopped.send_signal(19)  # SIGSTOP: a follower that reads nothing
    time.sleep(2.5)
    followers += [box.popen_as_user(follow, env=env, stdout=-1, text=True) for _ in range(6)]
    assert job(box, "wait", job_id, timeout=120).returncode == 0  # not held by `stopped`
    followers += [box.popen_as_user(follow, env=env, stdout=-1, text=True) for _ in range(6)]
    expected = hashlib.sha256(box.host_path(
        f"{box.home}/.local/state/distsvc/jobs/{job_id}/stdout").read_bytes()).hexdigest()
    assert len(box.host_path(
        f"{box.home}/.local/state/distsvc/jobs/{job_id}/stdout").read_bytes()) == 50 << 20
    for follower in followers:
        out, _ = follower.communicate(timeout=120)
        assert out.split()[0] == expected
    stopped.send_signal(18)
    out, _ = stopped.communicate(timeout=120)
    assert out.split()[0] == expected


def test_bad_input_gets_one_line_and_its_own_status(box: container.Container) -> None:
    box.write_file(f"{box.home}/plain-file", "echo hi\n", owner=box.user, mode=0o644)
    cases = [
        (["status", "99999"], 5, "no job 99999"),
        (["start", "--memory", "5X", "true"], 2, "--memory"),
        (["start", "no-such-command-here"], 127, "command not found"),
        (["start", "./plain-file"], 126, "not executable"),
        (["start", "--memory", "64M", "true"], 4, "--best-effort"),
    ]
    for args, code, text in cases:
        result = job(box, *args, check=False)
        assert result.returncode == code, (args, result)
        assert text in result.stderr and len(result.stderr.strip().splitlines()) == 1, result
    tmp = job(box, "start", "-w", "/tmp", "true", check=False)
    assert tmp.returncode == 4 and "under /tmp" in tmp.stderr, tmp
    assert job(box, "wait", start(box, "-w", "/tmp", "--isolate", "pid", "true")).returncode == 0
    running = start(box, "sleep", "3004")
    result = job(box, "remove", running, check=False)
    assert result.returncode == 4 and "stop it first" in result.stderr
    job(box, "stop", "--grace", "1", running)
    job(box, "wait", running, check=False)
    assert job(box, "remove", running).returncode == 0
    assert job(box, "status", running, check=False).returncode == 5


def test_limits_with_best_effort_are_recorded_and_said_not_enforced(
        box: container.Container) -> None:
    job_id = start(box, "--best-effort", "--memory", "64M", "--cpu", "50%", "--tasks", "20",
                   "--timeout", "1h", "sleep", "3005")
    unit = f"distsvc-job-{job_id}.service"
    shown = box.run_as_user(["systemctl", "--user", "show", unit, "-p", "MemoryMax",
                             "-p", "CPUQuotaPerSecUSec", "-p", "TasksMax",
                             "-p", "RuntimeMaxUSec"]).stdout
    assert "MemoryMax=67108864" in shown and "TasksMax=20" in shown
    assert "CPUQuotaPerSecUSec=500ms" in shown and "RuntimeMaxUSec=1h" in shown
    record = status(box, job_id)
    assert "memory" in record["not_enforced"]
    assert "not enforced" in job(box, "status", job_id).stdout
    job(box, "stop", "--grace", "1", job_id)


def test_isolation_is_observed_from_inside(box: container.Container) -> None:
    script = "ps -e -o pid= | wc -l; cat /proc/net/dev; ls -A /tmp | wc -l"
    job_id = start(box, "sh", "-c", script)
    assert job(box, "wait", job_id, check=False).returncode == 0, status(box, job_id)
    out = job(box, "logs", "--stdout", job_id).stdout.splitlines()
    assert int(out[0]) <= 4, out  # unshare, sh, ps (and wc): not the container's processes
    interfaces = [line.split(":")[0].strip() for line in out if ":" in line]
    assert interfaces == ["lo"], out
    assert out[-1] == "0"
    assert set(status(box, job_id)["isolation"]) == {"pid", "mount", "network"}


@pytest.mark.timeout(900)  # 1,000 jobs, each a client process: ~150 s here
def test_many_short_jobs_leave_no_units_and_the_daemon_flat(box: container.Container) -> None:
    ids = [start(box, "true") for _ in range(3)]
    job(box, "wait", *ids)
    pid = box.run_as_user(["systemctl", "--user", "show", "-p", "MainPID", "--value",
                           "distsvc.service"]).stdout.strip()
    fds_before = len(list(box.host_path(f"/proc/{pid}/fd").iterdir()))
    # A long job keeps the watcher looking while the short ones start: a look at a job whose
    # unit is still being made must not take its status for lost.
    long = start(box, "sleep", "3010")
    # In batches of 50, each waited for and checked before the next (retention keeps 100).
    check = ("import json, sys; jobs = json.load(sys.stdin)['jobs']; "
             "bad = [(j['id'], j['state'], j['exit_code'], j['reason']) for j in jobs "
             "if j['state'] != 'exited' or j['exit_code'] != 1]; print(bad); "
             "sys.exit(1 if bad else 0)")
    loop = ("for b in $(seq 1 20); do "
            "ids=$(for i in $(seq 1 50); do distsvc job start --isolate none false; done); "
            "distsvc job wait --json $ids | python3 -c \"$CHECK\" || exit; done")
    started = time.monotonic()
    box.run_as_user(["sh", "-c", loop], env={"DISTSVC_DAEMON": "required", "CHECK": check},
                    timeout=1200)
    print(f"1,000 jobs started and waited for in {time.monotonic() - started:.1f} s")
    helpers.wait_for(lambda: units(box) == [f"distsvc-job-{long}.service"], 30, "no units left")
    fds_after = len(list(box.host_path(f"/proc/{pid}/fd").iterdir()))
    assert fds_after <= fds_before + 2, (fds_before, fds_after)
    job(box, "stop", "--grace", "1", long)
    assert job(box, "clean").returncode == 0
    assert json.loads(job(box, "list", "--json", "--state", "exited").stdout)["jobs"] == []
    helpers.wait_for(lambda: not units(box), 30, "no units left")


def test_a_long_job_outlived_by_many_keeps_its_status_and_last_bytes(
        box: container.Container) -> None:
    config = f"{box.home}/.config/distsvc/config.toml"
    box.write_file(config, "[jobs]\nkeep = 2\n", owner=box.user)
    time.sleep(1.1)  # a new mtime for the daemon to see
    try:
        long = start(box, "sh", "-c", "sleep 4; echo last-line; exit 3")
        follower = box.popen_as_user(["distsvc", "job", "logs", "-f", long],
                                     env={"DISTSVC_DAEMON": "required"}, stdout=-1, text=True)
        for _ in range(3):  # each waited for at once: keep = 2 removes the older ones
            job(box, "wait", start(box, "true"))
        assert job(box, "wait", long, check=False).returncode == 3
        out, _ = follower.communicate(timeout=60)
        assert out == "last-line\n" and follower.returncode == 0
    finally:
        box.run_as_user(["rm", "-f", config])


def test_a_command_is_found_in_the_jobs_own_path(box: container.Container) -> None:
    box.run_as_user(["mkdir", "-p", f"{box.home}/bin"])
    box.write_file(f"{box.home}/bin/mytool", "#!/bin/sh\necho mine; exit 6\n", owner=box.user,
                   mode=0o755)
    path = f"{box.home}/bin:{container.PATH}"
    for isolate in ("none", "pid"):
        result = box.run_as_user(["distsvc", "job", "start", "--isolate", isolate, "mytool"],
                                 env={"DISTSVC_DAEMON": "required", "PATH": path})
        job_id = result.stdout.strip()
        assert job(box, "wait", job_id, check=False).returncode == 6, status(box, job_id)
        assert job(box, "logs", job_id).stdout == "mine\n"
    job_id = start(box, "--isolate", "none", "./bin/mytool")
    assert job(box, "wait", job_id, check=False).returncode == 6, status(box, job_id)


def test_timeout_ends_the_job_and_reads_as_timed_out(box: container.Container) -> None:
    job_id = start(box, "--timeout", "1s", "sleep", "3006")
    assert job(box, "wait", job_id, check=False).returncode == 124
    assert status(box, job_id)["state"] == "timeout"
    assert "timed out" in job(box, "status", job_id).stdout
    assert not processes(box, "sleep 3006")


def test_a_unit_left_behind_is_one_line_and_nothing_else_moves(
        box: container.Container) -> None:
    last = int(start(box, "true"))
    squatter = f"distsvc-job-{last + 1}.service"
    box.run_as_user(["systemd-run", "--user", "--unit", squatter, "sleep", "3007"])
    result = job(box, "start", "true", check=False)
    assert result.returncode == 4 and squatter in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    box.run_as_user(["systemctl", "--user", "stop", squatter])
    after = start(box, "true")  # the next one starts; the ID is not reused
    assert int(after) > last + 1
    assert job(box, "wait", after).returncode == 0


def test_a_corrupt_record_is_reported_and_the_rest_served(box: container.Container) -> None:
    job_id = start(box, "true")
    job(box, "wait", job_id)
    box.run_as_user(["systemctl", "--user", "kill", "-s", "KILL", "distsvc.service"])
    box.write_file(f"{box.home}/.local/state/distsvc/jobs/{job_id}/job.json", "{not json",
                   owner=box.user, mode=0o600)
    listed = job(box, "list")
    assert str(job_id) in listed.stderr and listed.returncode == 0
    fine = start(box, "true")
    assert job(box, "wait", fine).returncode == 0
    result = job(box, "status", job_id, check=False)
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1


def test_another_user_cannot_reach_the_jobs(box: container.Container) -> None:
    job_id = start(box, "sleep", "3008")
    if "intruder" not in box.users:
        box.add_user("intruder")
    sock = f"{box.runtime_dir()}/distsvc/distsvc.sock"
    connect = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"
    result = box.run_as_user(["python3", "-c", connect, sock], user="intruder", check=False)
    assert result.returncode != 0 and "Permission denied" in result.stderr
    result = box.run_as_user(["distsvc", "job", "stop", job_id], user="intruder", check=False,
                             env={"DISTSVC_DAEMON": "required"})
    assert result.returncode == 255  # its own (absent) daemon: never this user's jobs
    assert processes(box, "sleep 3008")
    mode = box.host_path(f"{box.home}/.local/state/distsvc/jobs/{job_id}/stdout").stat()
    assert mode.st_mode & 0o777 == 0o600
    job(box, "stop", "--grace", "1", job_id)


def test_detach_and_list_filters(box: container.Container) -> None:
    result = box.run_as_user(["distsvc-run", "--detach", "--name", "nightly", "sleep", "3009"],
                             env={"DISTSVC_DAEMON": "required"})
    job_id = result.stdout.strip()
    assert job_id.isdigit()
    running = json.loads(job(box, "list", "--json", "--state", "running").stdout)["jobs"]
    assert [j["id"] for j in running if j["name"] == "nightly"] == [job_id]
    assert "nightly" in job(box, "list").stdout
    job(box, "stop", "--grace", "1", "--signal", "INT", job_id)
    assert status(box, job_id)["signal"] == 2
    exited = json.loads(job(box, "list", "--json", "--state", "running").stdout)["jobs"]
    assert job_id not in [j["id"] for j in exited]


def test_retention_keeps_the_newest_and_cuts_big_output(box: container.Container) -> None:
    config = f"{box.home}/.config/distsvc/config.toml"
    box.write_file(config, '[jobs]\nkeep = 2\nmax_output = "1K"\n', owner=box.user)
    time.sleep(1.1)  # a new mtime for the daemon to see
    try:
        ids = [start(box, "sh", "-c", "head -c 3000 /dev/zero | tr '\\0' x") for _ in range(4)]
        job(box, "wait", ids[-1])
        helpers.wait_for(lambda: job(box, "status", ids[0], check=False).returncode == 5, 20,
                   "the oldest to be removed")
        record = status(box, ids[-1])
        assert record["output_cut"]["stdout"] > 0
        out = job(box, "logs", "--stdout", ids[-1]).stdout
        assert "bytes cut" in out and out.endswith("x")
    finally:
        box.run_as_user(["rm", "-f", config])


def test_a_foreground_command_runs_in_a_scope_with_its_limits(
        box: container.Container) -> None:
    result = box.run_as_user(
        ["distsvc-run", "--memory", "64M", "--best-effort", "sh", "-c",
         "cat /proc/self/cgroup; exit 7"], check=False)
    assert result.returncode == 7, result
    assert re.search(r"^0::/.*/distsvc-run-[0-9]+-[0-9a-f]+\.scope$", result.stdout,
                     re.MULTILINE), result.stdout
    refused = box.run_as_user(["distsvc-run", "--memory", "64M", "true"], check=False)
    assert refused.returncode == 4 and "--best-effort" in refused.stderr
    bad = box.run_as_user(["distsvc-run", "--cpu", "lots", "true"], check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
