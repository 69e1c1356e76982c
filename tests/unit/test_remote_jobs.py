"""distsvc.jobs.remote: what the host's answers mean (no SSH: its scripts' output as text)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from distsvc.jobs import remote
from distsvc.jobs.limits import Limits
from distsvc.jobs.record import Job

ORIGIN = "0123456789abcdef"


def make_job(**changes: object) -> Job:
    fields: dict[str, object] = dict(
        id="7", name=None, argv=["sh", "-c", "echo hi"], cwd="/home/u", env_names=[],
        limits=Limits(), not_enforced={}, isolation=[], state="running", created=1.0,
        placement={"kind": "ssh", "host": "h1", "mode": "supervisor",
                   "dir": f"/home/u/.local/state/distsvc/jobs-from/{ORIGIN}/7.1"})
    fields.update(changes)
    return Job(**fields)  # type: ignore[arg-type]


def test_unit_names_and_paths_come_only_from_our_record() -> None:
    assert remote.unit_name(ORIGIN, "7", 2) == "distsvc-job-01234567-7-2.service"
    for bad in (("../x", "7", 1), (ORIGIN, "7;rm", 1), (ORIGIN, "7", 0)):
        with pytest.raises(ValueError):
            remote.unit_name(*bad)
    with pytest.raises(ValueError):
        remote.monitor_script(ORIGIN, [(make_job(placement={"kind": "ssh", "dir": "rel"}), {})])


def test_a_monitor_answer_with_binary_data_and_a_cut_block() -> None:
    payload = b"\x00\nend\ndata stdout 0 3 3\n\xff"
    out = (b"job 7\nalive=yes\n"
           + f"data stdout 10 {len(payload)} 99\n".encode() + payload + b"\n"
           + b"data stderr 0 0 0\n\nend\n"
           + b"job 8\nalive=yes\ndata stdout 0 50 50\nshort")
    looks = remote.read_monitor(out)
    assert set(looks) == {"7"}  # 8's block is cut short: looked at again
    look = looks["7"]
    assert look.data["stdout"] == (10, payload) and look.sizes == {"stdout": 99, "stderr": 0}
    assert look.state == {"alive": "yes"}


@pytest.mark.parametrize(("status", "expected"), [
    ("supervisor 0", ("exited", 0, None, None)),
    ("supervisor 3", ("exited", 3, None, None)),
    ("supervisor 143", ("killed", None, 15, None)),
    ("systemd active exit-code 1 3", ("exited", 3, None, None)),
    ("systemd failed oom-kill 2 9", ("oom", None, None, None)),
    ("systemd failed timeout 2 15", ("timeout", None, None, None)),
])
def test_a_kept_status_is_read(status: str, expected: tuple[object, ...]) -> None:
    look = remote.Look({"status": status, "alive": "no"}, {}, {})
    assert remote.ended(make_job(), look) == expected


def test_a_supervisor_gone_without_status_is_unknown_and_a_live_one_runs() -> None:
    assert remote.ended(make_job(), remote.Look({"alive": "yes"}, {}, {})) is None
    state, _, _, reason = remote.ended(make_job(), remote.Look({"alive": "no"}, {}, {})) or ()
    assert state == "unknown" and "supervisor on h1 is gone" in str(reason)


def test_a_systemd_unit_running_ended_or_gone() -> None:
    job = make_job(placement={**make_job().placement, "mode": "systemd", "unit": "u.service"})
    running = {"u_activestate": "active", "u_result": "success", "u_execmaincode": "0",
               "u_execmainstatus": "0", "u_loadstate": "loaded"}
    assert remote.ended(job, remote.Look(running, {}, {})) is None
    done = {**running, "u_execmaincode": "1", "u_execmainstatus": "4"}
    assert remote.ended(job, remote.Look(done, {}, {})) == ("exited", 4, None, None)
    gone = {"u_activestate": "inactive", "u_loadstate": "not-found"}
    assert remote.ended(job, remote.Look(gone, {}, {}))[0] == "unknown"  # type: ignore[index]
    assert remote.ended(job, remote.Look({}, {}, {})) is None  # no answer: looked at again


def test_probe_answers() -> None:
    supervisor = remote.read_probe(b"root=/h/x\nno_systemd=Failed to connect to bus\nend=yes\n")
    assert supervisor.mode == "supervisor" and "Failed to connect" in str(
        supervisor.why_no_systemd)
    assert all(why for why in supervisor.isolation.values())
    systemd = remote.read_probe(
        b"root=/h/x\nsystemd=252\ncontrollers=cpu memory pids\nin_net=net:[2]\n"
        b"in_mnt=mnt:[3]\nin_user=user:[4]\nin_tmp=0\nout_net=net:[1]\nout_mnt=mnt:[1]\n"
        b"out_user=user:[1]\nout_tmp=5\npython3=/usr/bin/python3\nend=yes\n")
    assert systemd.mode == "systemd" and systemd.controllers == {"cpu", "memory", "pids"}
    assert dict(systemd.isolation) == {"network": None, "mount": None, "pid": None}
    with pytest.raises(remote.HostCannot):
        remote.read_probe(b"garbage")


def test_start_refusals_are_one_line_with_the_shells_status() -> None:
    with pytest.raises(remote.StartRefused) as missing:
        remote.read_start(127, b"error=notfound PATH=/usr/bin\n", "h1")
    assert missing.value.exit_status == 127 and "PATH=/usr/bin" in missing.value.message
    with pytest.raises(remote.StartRefused) as nodir:
        remote.read_start(4, b"error=nodir\n", "h1")
    assert nodir.value.exit_status == 4
    with pytest.raises(remote.HostCannot, match="never run twice"):
        remote.read_start(11, b"error=exists\n", "h1")


def test_the_scripts_are_valid_posix_shell(tmp_path: Path) -> None:
    """Every script parses with dash (`sh -n`), the shell a Debian host runs them with."""
    caps = remote.Caps("systemd", None, frozenset(), "/usr/bin/python3",
                       {"pid": None, "mount": None, "network": None}, "/h/x")
    job = make_job(isolation=["pid", "network"], limits=Limits(memory=1 << 20, timeout=60.0))
    scripts = [
        remote.probe_script(ORIGIN),
        remote.start_script(ORIGIN, job, {"A": "1\n2", "B": "it's"}, caps, "{}"),
        remote.start_script(ORIGIN, job, {}, remote.Caps("supervisor", "x", frozenset(), None,
                                                          {}, "/h/x"), "{}"),
        remote.monitor_script(ORIGIN, [(job, {"stdout": 5})]),
        remote.collect_script(ORIGIN, job, remote.Look({}, {}, {})),
        remote.stop_script(ORIGIN, job, "TERM", 2.0),
        remote.pause_script(ORIGIN, job, True),
        remote.remove_script(ORIGIN, [job.placement["dir"]], 30),
        remote.cut_script(ORIGIN, job, 100),
    ]
    for script in scripts:
        done = subprocess.run(["sh", "-n"], input=script.encode(), capture_output=True)
        assert done.returncode == 0, (done.stderr, script)


def test_limits_and_isolation_as_systemd_run_properties() -> None:
    import distsvc.jobs.isolation

    job = make_job(limits=Limits(memory=64 << 20, cpu=150, tasks=20, io_read=1 << 20,
                                 timeout=90.0))
    plan = distsvc.jobs.isolation.plan(["network"], user_manager=True)
    assert remote._text_properties(job, plan) == [
        f"MemoryMax={64 << 20}", "CPUQuota=150%", "TasksMax=20",
        f"IOReadBandwidthMax=/home/u {1 << 20}", "RuntimeMaxSec=90000000us",
        "PrivateNetwork=yes", "PrivateUsers=yes"]
