"""Job limits ENFORCED, and isolation observed, in the QEMU VM bed (tests/vmbed.py).

The VM boots Debian's kernel with a pure cgroup v2 hierarchy, so the test user's manager has
cpu, memory and pids delegated: what the container (test_jobs_e2e.py) can only record, is
enforced here. Everything goes through `distsvc job ...` and `distsvc-run` as the VM's user,
with the daemon started by its socket unit, as installed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import helpers
import vmbed

PROJECT = Path(__file__).resolve().parents[1]
UNITS = ("distsvc.socket", "distsvc.service")
# Everything in the VM is emulated (TCG): a command costs ~1 s, the boot ~15-50 s.
pytestmark = pytest.mark.timeout(600)
ALLOCATE = ("import time; chunks = []\n"
            "for _ in range(40): chunks.append(bytearray(5 << 20)); time.sleep(0.02)\n"
            "print('allocated 200 MB')\n")


@pytest.fixture(scope="module")
def box(vm: vmbed.VM) -> Iterator[vmbed.VM]:
    vm.run(["ln", "-sf", str(vmbed.VENV_BIN / "distsvc"), "/usr/bin/distsvc"])
    for unit in UNITS:
        vm.run(["sh", "-c", f"cat > /usr/lib/systemd/user/{unit}"],
               input=(PROJECT / "systemd" / unit).read_text())
    vm.run_as_user(["systemctl", "--user", "daemon-reload"])
    vm.run_as_user(["systemctl", "--user", "enable", "--now", "distsvc.socket"])
    yield vm
    vm.run_as_user(["systemctl", "--user", "disable", "--now", "distsvc.socket",
                    "distsvc.service"], check=False)


def job(bed: Any, *args: str, check: bool = True, timeout: float = 120) -> Any:
    return helpers.job(bed, *args, check=check, timeout=timeout)


start = helpers.start_job
status = helpers.job_status


def test_memory_limit_ends_a_job_out_of_memory(box: vmbed.VM) -> None:
    job_id = start(box, "--memory", "50M", "python3", "-c", ALLOCATE)
    assert job(box, "wait", job_id, check=False).returncode == 137
    record = status(box, job_id)
    assert record["state"] == "oom", record
    assert record["not_enforced"] == {}
    assert "out of memory" in job(box, "status", job_id).stdout
    assert "allocated" not in job(box, "logs", "--stdout", job_id).stdout


FORK = ("import os, signal\n"
        "children, refused = [], None\n"
        "for _ in range(30):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as error:\n"
        "        refused = error.strerror; break\n"
        "    if pid == 0:\n"
        "        signal.pause()\n"
        "    children.append(pid)\n"
        "for pid in children: os.kill(pid, 9); os.waitpid(pid, 0)\n"
        "print(len(children), refused)\n")


def test_task_limit_refuses_forks_past_it(box: vmbed.VM) -> None:
    job_id = start(box, "--tasks", "10", "python3", "-c", FORK)
    assert job(box, "wait", job_id, check=False).returncode == 0, status(box, job_id)
    forked, refused = job(box, "logs", "--stdout", job_id).stdout.split(" ", 1)
    assert 0 < int(forked) < 10 and "unavailable" in refused, (forked, refused)
    assert status(box, job_id)["limits"]["tasks"] == 10


def test_cpu_quota_holds_a_busy_loop_down(box: vmbed.VM) -> None:
    job_id = start(box, "--cpu", "20%", "--timeout", "4s", "sh", "-c", "while :; do :; done")
    assert job(box, "wait", job_id, check=False).returncode == 124
    record = status(box, job_id)
    assert record["state"] == "timeout"
    wall = record["ended"] - record["started"]
    assert record["cpu_ns"] is not None and wall > 0
    assert record["cpu_ns"] / 1e9 / wall < 0.6, record  # unlimited, a busy loop takes ~1.0


def test_an_undelegated_controller_is_refused_with_the_reason(box: vmbed.VM) -> None:
    manager = f"/sys/fs/cgroup/user.slice/user-{box.uid}.slice/user@{box.uid}.service"
    delegated = box.run(["cat", f"{manager}/cgroup.controllers"]).stdout
    result = job(box, "start", "--io-weight", "100", "true", check=False)
    if "io" in delegated.split():
        assert result.returncode == 0
        return
    assert result.returncode == 4 and "io controller" in result.stderr, result
    job_id = start(box, "--best-effort", "--io-weight", "100", "true")
    job(box, "wait", job_id)
    assert "io_weight" in status(box, job_id)["not_enforced"]


def test_pause_uses_the_freezer_and_resume_goes_on(box: vmbed.VM) -> None:
    job_id = start(box, "sh", "-c", "while :; do echo tick; sleep 0.2; done")
    deadline = time.monotonic() + 60
    while "tick" not in job(box, "logs", "--stdout", job_id).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    paused = json.loads(job(box, "pause", "--json", job_id).stdout)["job"]
    assert paused["pause_method"] == "freezer"
    state = box.run_as_user(["systemctl", "--user", "show", "-p", "FreezerState", "--value",
                             f"distsvc-job-{job_id}.service"]).stdout.strip()
    assert state == "frozen"
    before = job(box, "logs", "--stdout", job_id).stdout
    time.sleep(2)
    assert job(box, "logs", "--stdout", job_id).stdout == before
    assert "freezer" in job(box, "resume", job_id).stdout
    deadline = time.monotonic() + 60
    while job(box, "logs", "--stdout", job_id).stdout == before:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    job(box, "stop", "--grace", "2", job_id)


def test_isolation_is_observed_from_inside(box: vmbed.VM) -> None:
    script = "ps -e -o pid= | wc -l; cat /proc/net/dev; ls -A /tmp | wc -l"
    job_id = start(box, "sh", "-c", script)
    job(box, "wait", job_id)
    out = job(box, "logs", "--stdout", job_id).stdout.splitlines()
    assert int(out[0]) <= 4, out
    assert [line.split(":")[0].strip() for line in out if ":" in line] == ["lo"], out
    assert out[-1] == "0"


def test_a_foreground_command_is_held_to_its_memory_limit(box: vmbed.VM) -> None:
    result = box.run_as_user(["distsvc-run", "--memory", "50M", "python3", "-c", ALLOCATE],
                             check=False, timeout=120)
    assert result.returncode == 137, result
    assert "allocated" not in result.stdout
    fine = box.run_as_user(["distsvc-run", "--memory", "200M", "sh", "-c", "exit 3"],
                           check=False, timeout=120)
    assert fine.returncode == 3, fine
