"""distsvc.jobs.record: the job record's JSON, reading a unit's end, exit statuses, words."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from distsvc.jobs import record
from distsvc.jobs.limits import Limits
from distsvc.jobs.record import CLD_DUMPED, CLD_EXITED, CLD_KILLED, CorruptRecord, Job


def make_job(**changes: object) -> Job:
    job = Job(
        id="17", name="build", argv=["sh", "-c", "make | tee log"], cwd="/home/u/src",
        env_names=["PATH", "LANG"], limits=Limits(memory=512 << 20, timeout=600.0),
        not_enforced={"io_read": "the io controller is not delegated"},
        isolation=["pid", "mount"],
        placement={"kind": "local", "unit": "distsvc-job-17.service", "manager": "user"},
        state="running", created=1700000000.5, started=1700000001.0,
    )
    return dataclasses.replace(job, **changes)


# --- JSON ----------------------------------------------------------------------------------


def test_round_trip_keeps_every_field():
    job = make_job(state="exited", ended=1700000100.0, exit_code=3, cpu_ns=123456789,
                   memory_peak=10 << 20, memory_current=None, output_cut={"stdout": 99})
    data = record.to_json(job)
    assert data["version"] == record.VERSION == 2
    assert data["limits"] == {"memory": 512 << 20, "timeout": 600.0}
    again = record.from_json(json.loads(json.dumps(data)))
    assert again == job


def test_round_trip_of_a_paused_job():
    job = make_job(paused=True, pause_method="freezer")
    assert record.from_json(record.to_json(job)) == job


def test_defaults_may_be_left_out():
    data = record.to_json(make_job())
    for optional in ("started", "ended", "exit_code", "signal", "reason", "cpu_ns",
                     "memory_peak", "memory_current", "paused", "pause_method", "output_cut"):
        del data[optional]
    job = record.from_json(data)
    assert job.started is None and job.paused is False and job.output_cut == {}


def test_whole_number_times_read_back_as_floats():
    data = record.to_json(make_job(created=1700000000.0, started=None))
    data["created"] = 1700000000
    job = record.from_json(data)
    assert isinstance(job.created, float) and job.started is None


def corrupt(change) -> str:
    data = copy.deepcopy(record.to_json(make_job()))
    change(data)
    with pytest.raises(CorruptRecord) as caught:
        record.from_json(data)
    assert "\n" not in str(caught.value)
    return caught.value.why


def test_a_newer_version_says_to_upgrade():
    assert "newer" in corrupt(lambda d: d.update(version=3))
    assert "upgrade distsvc" in corrupt(lambda d: d.update(version=3))
    assert "is not one of (1, 2)" in corrupt(lambda d: d.pop("version"))
    assert "is not one of (1, 2)" in corrupt(lambda d: d.update(version="1"))


def test_a_version_1_record_reads_with_the_queue_defaults():
    data = record.to_json(make_job())
    for key in ("target", "target_host", "group", "after", "retries", "retry_delay", "attempt",
                "attempts", "not_before", "best_effort", "isolation_asked", "skipped",
                "explicit_limits",
                "host_down_since", "stopped"):
        del data[key]
    data["version"] = 1
    job = record.from_json(data)
    assert job.target == "local" and job.attempt == 1 and job.attempts == [] and not job.stopped


def test_queue_fields_round_trip():
    job = make_job(state="queued", target="host", target_host="h2", group="gpu", after=["3"],
                   retries=2, retry_delay=5, attempt=2, not_before=1700000200,
                   attempts=[{"attempt": 1, "state": "exited", "exit_code": 1}],
                   isolation_asked=["pid"], skipped={"h1": "no systemd"}, reason="no free slot")
    again = record.from_json(json.loads(json.dumps(record.to_json(job))))
    assert again == job and isinstance(again.retry_delay, float)
    assert record.describe_state(again) == "queued: no free slot"


def test_dependency_failed_and_host_down_in_words_and_status():
    job = make_job(state="dependency-failed", reason="job 3 exited 1")
    assert record.describe_state(job) == "dependency failed: job 3 exited 1"
    assert record.exit_status(job) == 125
    down = make_job(placement={"kind": "ssh", "host": "h1"}, host_down_since=1700000000.0)
    assert record.describe_state(down).startswith("unknown (host h1 down since ")
    assert record.exit_status(down) == 255


def test_a_bad_target_is_corrupt():
    assert "target" in corrupt(lambda d: d.update(target="moon"))
    assert "target_host" in corrupt(lambda d: d.update(target="host"))


@pytest.mark.parametrize(("change", "says"), [
    (lambda d: d.update(argv="ls"), "argv"),
    (lambda d: d.update(argv=[]), "argv"),
    (lambda d: d.update(argv=["ls", 3]), "argv"),
    (lambda d: d.update(id=17), "id"),
    (lambda d: d.update(created="yesterday"), "created"),
    (lambda d: d.update(paused=1), "paused"),
    (lambda d: d.update(exit_code=True), "exit_code"),
    (lambda d: d.update(state="sleeping"), "state"),
    (lambda d: d.update(state="exited"), "exit_code"),
    (lambda d: d.update(state="killed"), "signal"),
    (lambda d: d.update(pause_method="magic"), "pause_method"),
    (lambda d: d.update(placement={"kind": 1}), "placement"),
    (lambda d: d.update(not_enforced=[]), "not_enforced"),
    (lambda d: d.update(output_cut={"stdin": 3}), "output_cut"),
    (lambda d: d.update(output_cut={"stdout": "3"}), "output_cut"),
    (lambda d: d.update(limits={"memory": "1G"}), "limits.memory"),
    (lambda d: d.update(limits=None), "limits"),
    (lambda d: d.pop("cwd"), "missing field 'cwd'"),
    (lambda d: d.update(colour="blue"), "unknown field 'colour'"),
])
def test_malformed_records_are_corrupt_with_the_reason(change, says):
    assert says in corrupt(change)


def test_not_an_object_is_corrupt():
    with pytest.raises(CorruptRecord, match="not a JSON object"):
        record.from_json([1, 2])


def test_corrupt_record_with_id_and_path_is_one_line_naming_both():
    error = CorruptRecord("not JSON", "17", "/s/jobs/17/job.json")
    assert error.message == ("job 17: corrupt record /s/jobs/17/job.json: not JSON "
                             "(`distsvc job remove 17` deletes it)")


# --- finished: systemd's properties to a state ----------------------------------------------


@pytest.mark.parametrize(("props", "expected"), [
    (("active", "success", 0, 0), None),                       # running
    (("activating", "success", 0, 0), None),
    (("deactivating", "success", CLD_EXITED, 0), None),       # being stopped: not final yet
    (("reloading", "success", 0, 0), None),
    (("active", "success", CLD_EXITED, 0), ("exited", 0, None, None)),   # RemainAfterExit
    (("failed", "exit-code", CLD_EXITED, 3), ("exited", 3, None, None)),
    (("failed", "exit-code", CLD_EXITED, 199), ("exited", 199, None, None)),
    (("failed", "exit-code", CLD_EXITED, 244), ("exited", 244, None, None)),
    (("inactive", "success", CLD_KILLED, 15), ("killed", None, 15, None)),
    (("failed", "signal", CLD_KILLED, 9), ("killed", None, 9, None)),
    (("failed", "core-dump", CLD_DUMPED, 11), ("killed", None, 11, None)),
    (("failed", "oom-kill", CLD_KILLED, 9), ("oom", None, None, None)),
    (("failed", "oom-kill", CLD_EXITED, 1), ("oom", None, None, None)),  # a child was killed
    (("failed", "timeout", CLD_KILLED, 15), ("timeout", None, None, None)),
])
def test_finished_reads_the_units_end(props, expected):
    assert record.finished(*props) == expected


def test_systemd_exit_codes_are_failures_to_start():
    state, code, sig, reason = record.finished("failed", "exit-code", CLD_EXITED, 200)
    assert (state, code, sig) == ("failed", None, None)
    assert reason == "cannot change to the working directory (systemd exit code 200)"
    state, _, _, reason = record.finished("failed", "exit-code", CLD_EXITED, 203)
    assert state == "failed" and reason.startswith(record.NOT_FOUND)
    assert record.finished("failed", "exit-code", CLD_EXITED, 243)[0] == "failed"


def test_systemd_exit_codes_are_the_commands_own_once_it_started():
    assert record.finished("failed", "exit-code", CLD_EXITED, 203, command_started=True) == (
        "exited", 203, None, None)


def test_a_unit_that_never_ran_its_command():
    assert record.finished("failed", "resources", 0, 0) == (
        "failed", None, None, "systemd could not start the unit (result: resources)")
    state, _, _, reason = record.finished("inactive", "success", 0, 0)
    assert state == "unknown" and "without an exit status" in reason


def test_every_systemd_exit_code_has_a_reason_in_the_documented_range():
    assert set(record.SYSTEMD_EXIT_CODES) <= set(range(200, 244))
    assert {200, 203, 209, 222, 226, 243} <= set(record.SYSTEMD_EXIT_CODES)


# --- exit_status and describe_state ---------------------------------------------------------


@pytest.mark.parametrize(("changes", "status"), [
    ({"state": "exited", "exit_code": 0}, 0),
    ({"state": "exited", "exit_code": 42}, 42),
    ({"state": "killed", "signal": 15}, 143),
    ({"state": "killed", "signal": 9}, 137),
    ({"state": "timeout"}, 124),
    ({"state": "oom"}, 137),
    ({"state": "failed", "reason": "command not found: frob"}, 127),
    ({"state": "failed", "reason": "cannot change to the working directory"}, 126),
    ({"state": "unknown", "reason": "the unit vanished"}, 255),
    ({"state": "running"}, 255),
])
def test_exit_status_as_a_shell_would(changes, status):
    assert record.exit_status(make_job(**changes)) == status


@pytest.mark.parametrize(("changes", "words"), [
    ({"state": "exited", "exit_code": 0}, "exited 0"),
    ({"state": "killed", "signal": 15}, "killed by SIGTERM"),
    ({"state": "killed", "signal": 99}, "killed by signal 99"),
    ({"state": "timeout"}, "timed out after 10m"),
    ({"state": "timeout", "limits": Limits()}, "timed out"),
    ({"state": "oom"}, "out of memory (limit 512M)"),
    ({"state": "oom", "limits": Limits()}, "out of memory"),
    ({"state": "failed", "reason": "command not found: frob"},
     "failed to start: command not found: frob"),
    ({"state": "unknown", "reason": "the unit vanished"}, "unknown: the unit vanished"),
    ({"state": "running"}, "running"),
    ({"state": "running", "paused": True, "pause_method": "freezer"}, "paused (freezer)"),
    ({"state": "running", "paused": True, "pause_method": "signals"}, "paused (signals)"),
    ({"state": "queued"}, "queued"),
    ({"state": "starting"}, "starting"),
])
def test_describe_state_for_people(changes, words):
    assert record.describe_state(make_job(**changes)) == words


def test_final_states():
    assert {"exited", "killed", "timeout", "oom", "failed", "dependency-failed",
            "unknown"} == record.FINAL
    assert set(record.STATES) >= record.FINAL
