"""`distsvc job status` and `job list` for people, from records as the daemon sends them
(record.to_json): a job on an SSH host (systemd or supervisor), a queued job, a
dependency-failed one and one on its second attempt. No daemon: the rendering functions."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from distsvc.commands import job as cli
from distsvc.jobs import record
from distsvc.jobs.limits import Limits
from distsvc.jobs.record import Job

T0 = 1700000000.0
REMOTE_DIR = "/home/u/.local/state/distsvc/jobs/17"


def when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def make(**changes: Any) -> Job:
    job = Job(id="17", name="build", argv=["make", "-j4"], cwd="/home/u/src", env_names=[],
              limits=Limits(memory=1 << 30), not_enforced={}, isolation=["pid", "mount"],
              placement={"kind": "ssh", "host": "h1", "mode": "systemd",
                         "unit": "distsvc-job-17.service", "dir": REMOTE_DIR},
              state="running", created=T0, started=T0 + 1, target="best")
    return dataclasses.replace(job, **changes)


def status(job: Job) -> dict[str, str]:
    """status's lines by label; continuation lines (no label) under "+label"."""
    facts: dict[str, str] = {}
    label = ""
    for line in cli.status_text(record.to_json(job)).splitlines():
        head, value = line[:cli.LABEL].strip(), line[cli.LABEL:]
        if head:
            label = head.rstrip(":")
            facts[label] = value
        else:
            facts["+" + label] = facts.get("+" + label, "") + value + "\n"
    return facts


def listing(*jobs: Job) -> list[list[str]]:
    """list's rows split into columns (the widths are the table's own)."""
    text = cli.list_table([record.to_json(j) for j in jobs])
    lines = text.splitlines()
    header = lines[0]
    starts = [header.index(name) for name in ("ID", "STATE", "STARTED", "HOST", "NAME",
                                              "COMMAND")]
    return [[line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
            for line in lines]


QUEUED = make(state="queued", reason="no free slot (h1 2/2, h2 2/2)", placement={},
              started=None, target="host", target_host="h2", isolation=[],
              isolation_asked=["pid"])


def test_an_ssh_job_under_systemd() -> None:
    facts = status(make(group="nightly", after=["3", "4"]))
    assert facts["state"] == "running"
    assert facts["placement"] == "ssh: h1, systemd user unit distsvc-job-17.service"
    assert facts["remote dir"] == REMOTE_DIR
    assert facts["target"] == "the best host with a free slot when it starts"
    assert facts["group"] == "nightly"
    assert facts["after"] == "3, 4"
    assert facts["isolation"] == "pid, mount"
    assert "attempt" not in facts and "skipped" not in facts


def test_an_ssh_job_under_the_supervisor_with_skipped_hosts() -> None:
    job = make(placement={"kind": "ssh", "host": "h3", "mode": "supervisor",
                          "dir": REMOTE_DIR},
               skipped={"h1": "unreachable: connection refused",
                        "h2": "no systemd user manager there, and limits were asked"},
               best_effort=True, not_enforced={"memory": "no systemd user manager on h3"})
    facts = status(job)
    assert facts["placement"] == "ssh: h3, supervisor (no systemd user manager there)"
    assert facts["skipped"] == "h1: unreachable: connection refused"
    assert facts["+skipped"] == "h2: no systemd user manager there, and limits were asked\n"
    assert facts["limits"] == "memory 1G (not enforced: no systemd user manager on h3)"


def test_a_local_job_keeps_its_placement_line() -> None:
    job = make(placement={"kind": "local", "unit": "distsvc-job-17.service",
                          "manager": "user"}, target="local")
    facts = status(job)
    assert facts["placement"] == "local: distsvc-job-17.service (user manager)"
    assert facts["target"] == "this machine"
    assert "remote dir" not in facts


def test_a_queued_job() -> None:
    facts = status(QUEUED)
    assert facts["state"] == "queued: no free slot (h1 2/2, h2 2/2)"
    assert facts["placement"] == "none yet"
    assert facts["target"] == "host h2"
    assert facts["isolation"] == "pid, when it starts"
    assert facts["started"] == "-"
    assert "note" not in facts  # the reason is said once, in the state


def test_a_dependency_failed_job() -> None:
    job = make(state="dependency-failed", reason="job 3 exited 1", placement={},
               started=None, ended=T0 + 5, after=["3"])
    facts = status(job)
    assert facts["state"] == "dependency failed: job 3 exited 1"
    assert facts["placement"] == "none (it never started)"
    assert facts["after"] == "3"
    assert facts["ended"] == when(T0 + 5)
    assert "note" not in facts


def test_a_job_on_its_second_attempt_lists_the_first() -> None:
    first = make(state="exited", exit_code=1, ended=T0 + 9,
                 placement={"kind": "ssh", "host": "h2", "mode": "systemd",
                            "unit": "distsvc-job-17.service", "dir": REMOTE_DIR})
    second = make(retries=3, attempt=2, attempts=[record.attempt_summary(first)],
                  started=T0 + 20)
    facts = status(second)
    assert facts["attempt"] == "2 of 4"
    assert facts["earlier"] == f"attempt 1 on h2: exited 1, ended {when(T0 + 9)}"
    assert "+earlier" not in facts


def test_a_retry_waiting_for_its_delay() -> None:
    first = make(state="killed", signal=9, ended=T0 + 9)
    second = make(state="failed", reason="command not found: make", attempt=2,
                  started=None, ended=T0 + 30, placement={"kind": "local", "unit": "u",
                                                           "manager": "user"})
    job = make(state="queued", reason="retrying in 60 s", retries=2, attempt=3,
               placement={}, started=None, not_before=T0 + 90,
               attempts=[record.attempt_summary(first), record.attempt_summary(second)])
    facts = status(job)
    assert facts["attempt"] == f"3 of 3, the next no earlier than {when(T0 + 90)}"
    assert facts["earlier"] == f"attempt 1 on h1: killed by SIGKILL, ended {when(T0 + 9)}"
    assert facts["+earlier"] == (f"attempt 2 on this machine: failed to start: command not "
                                 f"found: make, ended {when(T0 + 30)}\n")
    assert facts["placement"] == "none yet"  # not the last attempt's


def test_a_job_whose_host_is_down_is_unknown_but_not_over() -> None:
    facts = status(make(host_down_since=T0 + 60))
    assert facts["state"] == f"unknown (host h1 down since {when(T0 + 60)})"


def test_list_shows_where_each_job_is_or_is_to_go() -> None:
    rows = listing(
        make(id="20"),
        dataclasses.replace(QUEUED, id="19"),
        dataclasses.replace(QUEUED, id="18", target="best", target_host=None),
        dataclasses.replace(QUEUED, id="16", target="local", target_host=None),
        make(id="15", placement={"kind": "local", "unit": "u", "manager": "user"}),
        make(id="14", state="dependency-failed", reason="job 3 exited 1", placement={},
             started=None, target="best"),
        # a queued retry still holds its last attempt's placement: not where it will go
        make(id="13", state="queued", reason="retrying", attempt=2))
    assert rows[0] == ["ID", "STATE", "STARTED", "HOST", "NAME", "COMMAND"]
    hosts = {row[0]: row[3] for row in rows[1:]}
    assert hosts == {"20": "h1", "19": "h2", "18": "-", "16": "local", "15": "local",
                     "14": "-", "13": "-"}
    states = {row[0]: row[1] for row in rows[1:]}
    assert states["19"] == "queued: no free slot (h1 2/2, h2 2/2)"
    assert states["14"] == "dependency failed: job 3 exited 1"
    assert rows[1][2] == when(T0 + 1) and rows[2][2] == when(T0)  # started, else created
    assert rows[1][4:] == ["build", "make -j4"]


def test_list_with_no_jobs_is_the_header() -> None:
    assert cli.list_table([]) == "ID  STATE  STARTED  HOST  NAME  COMMAND\n"
