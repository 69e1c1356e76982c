"""jobs/local.py's pure parts: the checks made before anything starts, and the unit's
properties (the systemd side is tested end to end in test_jobs_e2e.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import distsvc.jobs.isolation
import distsvc.jobs.limits
import distsvc.jobs.local
import distsvc.jobs.record


def test_a_missing_command_is_127_and_a_plain_file_126(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path)}
    with pytest.raises(distsvc.jobs.local.JobError) as missing:
        distsvc.jobs.local.check_command(["nope"], str(tmp_path), env)
    assert missing.value.exit_status == 127 and "command not found" in missing.value.message
    (tmp_path / "plain").write_text("x")
    with pytest.raises(distsvc.jobs.local.JobError) as plain:
        distsvc.jobs.local.check_command(["./plain"], str(tmp_path), env)
    assert plain.value.exit_status == 126
    with pytest.raises(distsvc.jobs.local.JobError) as directory:
        distsvc.jobs.local.check_command(["true"], str(tmp_path / "gone"), os.environ)
    assert "no such directory" in directory.value.message
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    distsvc.jobs.local.check_command(["tool"], "/", env)
    distsvc.jobs.local.check_command([str(tool)], "/", {})


def test_limits_without_their_controller_are_named() -> None:
    limits = distsvc.jobs.limits.Limits(memory=1 << 26, cpu=50, tasks=10, timeout=5.0)
    missing = distsvc.jobs.local.unenforceable(limits, frozenset({"cpu"}))
    assert set(missing) == {"memory", "tasks"}
    assert "memory controller" in missing["memory"] and "pids controller" in missing["tasks"]
    assert distsvc.jobs.local.unenforceable(limits, frozenset({"cpu", "memory", "pids"})) == {}


def test_the_unit_keeps_its_status_and_appends_output_to_the_job_files(tmp_path: Path) -> None:
    job = distsvc.jobs.record.Job(
        id="7", name=None, argv=["true"], cwd="/srv", env_names=["A"],
        limits=distsvc.jobs.limits.Limits(memory=1 << 30), not_enforced={}, isolation=[],
        placement={"kind": "local", "unit": "distsvc-job-7.service", "manager": "user"},
        state="starting", created=0.0)
    plan = distsvc.jobs.isolation.plan([], user_manager=True)
    props = distsvc.jobs.local.properties(job, {"A": "1"}, tmp_path, plan)
    assert props["RemainAfterExit"] is True and props["Slice"] == "distsvc.slice"
    assert props["StandardOutputFileToAppend"] == str(tmp_path / "7" / "stdout")
    assert props["StandardErrorFileToAppend"] == str(tmp_path / "7" / "stderr")
    assert props["Environment"] == ["A=1"] and props["WorkingDirectory"] == "/srv"
    assert props["MemoryMax"] == 1 << 30 and props["KillMode"] == "control-group"
    assert distsvc.jobs.local.unit_name("7") == "distsvc-job-7.service"
