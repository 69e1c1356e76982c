"""`distsvc hosts`: the JOBS column, from the daemon's rows ("jobs": IDs) or, when the rows
come without them (measured in-process), from the job records on disk."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import distsvc.commands.common
from distsvc.commands import hosts
from distsvc.jobs import store
from distsvc.jobs.limits import Limits
from distsvc.jobs.record import Job


def row(host: str, **changes: Any) -> dict[str, Any]:
    base = {"host": host, "state": "up", "score": 0.1, "load_per_cpu": 0.1, "load1": 0.2,
            "cpus": 2, "cpu_pressure": 1.0, "mem_available_kb": 2 << 20, "metric": None,
            "access_ms": 3.0, "measured_at": 1.0, "age_s": 4.0, "running": 0, "slots": None,
            "error": None}
    return {**base, **changes}


def column(text: str, name: str) -> dict[str, str]:
    lines = text.splitlines()
    at = lines[0].index(name)
    return {line.split()[0]: line[at:].split()[0] for line in lines[1:]}


def jobs_column(text: str) -> dict[str, str]:
    return column(text, "JOBS")


def on(host: str, id: str, state: str = "running", **changes: Any) -> Job:
    job = Job(id=id, name=None, argv=["sleep", "60"], cwd="/", env_names=[],
              limits=Limits(), not_enforced={}, isolation=[],
              placement={"kind": "ssh", "host": host, "mode": "systemd",
                         "unit": f"distsvc-job-{id}.service", "dir": f"/r/{id}"},
              state=state, created=float(id), started=float(id), target="best")
    return dataclasses.replace(job, **changes)


def environ_with_jobs(tmp_path: Path, *jobs: Job) -> dict[str, str]:
    environ = {"HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}
    root = tmp_path / "state" / "distsvc" / "jobs"
    store.ensure_root(root)
    for job in jobs:
        store.create(root, job)
    return environ


def test_the_daemons_rows_are_used_as_they_come(tmp_path: Path) -> None:
    rows = [row("h1", jobs=["3", "5"], slots=4), row("h2", jobs=[])]
    environ = environ_with_jobs(tmp_path, on("h2", "9"))  # not read: the daemon knows better
    shown = hosts.with_jobs(rows, environ)
    assert shown == rows
    assert jobs_column(hosts.table(shown)) == {"h1": "2", "h2": "0"}


def test_rows_without_job_ids_get_them_from_the_records(tmp_path: Path) -> None:
    environ = environ_with_jobs(
        tmp_path,
        on("h1", "1"), on("h1", "2", state="starting"), on("h2", "3"),
        on("h1", "4", state="exited", exit_code=0, ended=9.0),       # ended
        on("h2", "5", state="queued", reason="retrying", attempt=2),  # not placed now
        on("h1", "6", placement={"kind": "local", "unit": "u", "manager": "user"}),
        on("h2", "7", host_down_since=3.0),                          # still unfinished
        on("h9", "8"))                                               # not configured
    shown = hosts.with_jobs([row("h1", running=2, slots=2), row("h2"), row("h3")], environ)
    assert {r["host"]: r["jobs"] for r in shown} == {"h1": ["1", "2"], "h2": ["3", "7"],
                                                     "h3": []}
    assert jobs_column(hosts.table(shown)) == {"h1": "2", "h2": "2", "h3": "0"}
    assert column(hosts.table(shown), "RUNNING") == {"h1": "2/2", "h2": "0", "h3": "0"}


def test_no_job_records_is_no_jobs(tmp_path: Path) -> None:
    environ = {"HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "none")}
    shown = hosts.with_jobs([row("h1")], environ)
    assert shown[0]["jobs"] == []


def test_a_corrupt_record_does_not_stop_the_table(tmp_path: Path) -> None:
    environ = environ_with_jobs(tmp_path, on("h1", "1"), on("h1", "2"))
    (tmp_path / "state" / "distsvc" / "jobs" / "2" / "job.json").write_text("{")
    assert hosts.with_jobs([row("h1")], environ)[0]["jobs"] == ["1"]


def test_json_rows_carry_the_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`distsvc hosts --json` as a whole, its survey (SSH, or the daemon) replaced."""
    for name, value in environ_with_jobs(tmp_path, on("h1", "4"), on("h1", "2")).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(hosts, "survey", lambda config, refresh: ([row("h1"), row("h2")], []))
    monkeypatch.setattr(distsvc.commands.common, "load_config", lambda args: None)
    assert hosts.run(argparse.Namespace(json=True, refresh=False)) == 0
    rows = json.loads(capsys.readouterr().out)["hosts"]
    assert [(r["host"], r["jobs"]) for r in rows] == [("h1", ["2", "4"]), ("h2", [])]
