"""distsvc.state: encoding, atomic writes under a lock, corrupt files, live placements."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

import distsvc.state
from distsvc.probe import Measurement
from distsvc.state import HostState, Placement, State


def sample_state() -> State:
    return State(
        hosts={
            "b": HostState(state=distsvc.state.UP, measured_at=1700000000.5, access_ms=12.25,
                           measurement=Measurement(load1=0.5, cpus=4, psi_some_avg10=1.5,
                                                   mem_available_kb=1024),
                           last_used=1700000001.0),
            "a": HostState(state=distsvc.state.UNKNOWN, measured_at=1700000002.0,
                           error="connection refused"),
            "c": HostState(state=distsvc.state.UP, measured_at=1.0,
                           measurement=Measurement(metric=3.5)),
            "never": HostState(),
        },
        placements=[
            Placement(host="b", pid=1234, started="98765", placed_at=1700000000.75),
            Placement(host="a", pid=42, started=None, placed_at=1.0),
        ],
    )


def test_encode_decode_round_trip():
    state = sample_state()
    assert distsvc.state.decode(distsvc.state.encode(state)) == state


def test_encode_is_versioned_json():
    data = json.loads(distsvc.state.encode(sample_state()))
    assert data["version"] == distsvc.state.SCHEMA_VERSION
    assert sorted(data["hosts"]) == ["a", "b", "c", "never"]
    assert len(data["placements"]) == 2


def test_decode_rejects_another_schema_version():
    text = json.dumps({"version": 99, "hosts": {}, "placements": []})
    with pytest.raises(ValueError):
        distsvc.state.decode(text)


def test_write_then_read_round_trip(tmp_path):
    with distsvc.state.locked(tmp_path):
        distsvc.state.write(tmp_path, sample_state())
    assert distsvc.state.read(tmp_path) == sample_state()


def test_read_of_a_missing_file_is_an_empty_state(tmp_path):
    assert distsvc.state.read(tmp_path) == State()
    assert distsvc.state.read(tmp_path / "no" / "such" / "dir") == State()


def test_write_leaves_no_temporary_files(tmp_path):
    with distsvc.state.locked(tmp_path):
        for n in range(5):
            state = sample_state()
            state.placements.append(Placement(host="b", pid=n, started=None, placed_at=n))
            distsvc.state.write(tmp_path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        distsvc.state.STATE_FILE, distsvc.state.LOCK_FILE]
    assert len(distsvc.state.read(tmp_path).placements) == 3


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    distsvc.state.write(tmp_path, sample_state())
    broken = State(placements=[Placement(host=object(), pid=1, started=None,  # type: ignore
                                         placed_at=0.0)])
    with pytest.raises(TypeError):
        distsvc.state.write(tmp_path, broken)
    assert [p.name for p in tmp_path.iterdir()] == [distsvc.state.STATE_FILE]
    assert distsvc.state.read(tmp_path) == sample_state()


def test_write_replaces_the_file_instead_of_rewriting_it(tmp_path):
    distsvc.state.write(tmp_path, State())
    before = (tmp_path / distsvc.state.STATE_FILE).stat().st_ino
    distsvc.state.write(tmp_path, sample_state())
    assert (tmp_path / distsvc.state.STATE_FILE).stat().st_ino != before


def test_locked_creates_the_directory_private(tmp_path):
    directory = tmp_path / "run" / "distsvc"
    with distsvc.state.locked(directory):
        assert directory.is_dir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / distsvc.state.LOCK_FILE).stat().st_mode) & 0o077 == 0


def test_locked_is_reentrant_across_sequential_uses(tmp_path):
    for _ in range(3):
        with distsvc.state.locked(tmp_path):
            pass


@pytest.mark.parametrize("content", [
    "",
    "{",
    "not json at all",
    "[]",
    "null",
    "42",
    '{"version": 1}',
    '{"version": 2, "hosts": {}, "placements": []}',
    '{"hosts": {}, "placements": []}',
    '{"version": 1, "hosts": [], "placements": []}',
    '{"version": 1, "hosts": {"a": "up"}, "placements": []}',
    '{"version": 1, "hosts": {"a": {"measurement": {"bogus": 1}}}, "placements": []}',
    '{"version": 1, "hosts": {}, "placements": [{"host": "a"}]}',
    '{"version": 1, "hosts": {}, "placements": [1, 2]}',
])
def test_corrupt_or_foreign_file_reads_as_an_empty_state(tmp_path, content):
    (tmp_path / distsvc.state.STATE_FILE).write_text(content)
    assert distsvc.state.read(tmp_path) == State()


def test_truncated_file_reads_as_an_empty_state(tmp_path):
    text = distsvc.state.encode(sample_state())
    (tmp_path / distsvc.state.STATE_FILE).write_text(text[: len(text) // 2])
    assert distsvc.state.read(tmp_path) == State()


def test_unreadable_state_path_reads_as_an_empty_state(tmp_path):
    (tmp_path / distsvc.state.STATE_FILE).mkdir()  # reading a directory fails with OSError
    assert distsvc.state.read(tmp_path) == State()


def test_state_file_with_invalid_utf8_reads_as_an_empty_state(tmp_path):
    (tmp_path / distsvc.state.STATE_FILE).write_bytes(b'{"version": 1, "hosts": {"\xff": {}}}')
    assert distsvc.state.read(tmp_path) == State()


def test_corrupt_file_is_replaced_by_the_next_write(tmp_path):
    (tmp_path / distsvc.state.STATE_FILE).write_text("garbage")
    with distsvc.state.locked(tmp_path):
        state = distsvc.state.read(tmp_path)
        state.placements.append(Placement(host="h", pid=1, started=None, placed_at=0.0))
        distsvc.state.write(tmp_path, state)
    assert len(distsvc.state.read(tmp_path).placements) == 1


# --- concurrency -----------------------------------------------------------------------------

WRITER = """
import sys
from pathlib import Path
import distsvc.state as s

directory, worker, rounds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for _ in range(rounds):
    with s.locked(directory):
        state = s.read(directory)
        count = len(state.placements)
        state.placements.append(
            s.Placement(host=f"w{worker}", pid=count, started=None, placed_at=float(count)))
        s.write(directory, state)
"""

WRITERS = 4
ROUNDS = 50


def test_concurrent_locked_increments_are_never_lost_and_never_torn(tmp_path):
    directory = tmp_path / "state"
    path = directory / distsvc.state.STATE_FILE
    with distsvc.state.locked(directory):
        distsvc.state.write(directory, State())
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(directory), str(n), str(ROUNDS)],
                         stderr=subprocess.PIPE)
        for n in range(WRITERS)
    ]
    reads = 0
    seen = 0
    deadline = time.monotonic() + 100
    try:
        while any(w.poll() is None for w in writers):
            assert time.monotonic() < deadline, "writers did not finish"
            # No lock and no forgiveness: a reader must never see a torn or partial file.
            state = distsvc.state.decode(path.read_text(encoding="utf-8"))
            assert len(state.placements) >= seen, "the counter went backwards"
            seen = len(state.placements)
            reads += 1
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
            w.wait()
    for w in writers:
        assert w.returncode == 0, w.stderr.read().decode()
        w.stderr.close()
    final = distsvc.state.decode(path.read_text(encoding="utf-8"))
    assert len(final.placements) == WRITERS * ROUNDS
    # Each increment saw every earlier one: the counters are exactly 0..199.
    assert sorted(p.pid for p in final.placements) == list(range(WRITERS * ROUNDS))
    per_worker = {f"w{n}": 0 for n in range(WRITERS)}
    for p in final.placements:
        per_worker[p.host] += 1
    assert per_worker == {f"w{n}": ROUNDS for n in range(WRITERS)}
    assert reads > 0
    assert sorted(p.name for p in directory.iterdir()) == [
        distsvc.state.STATE_FILE, distsvc.state.LOCK_FILE]


# --- placements and processes ----------------------------------------------------------------


def test_process_start_time_of_this_process():
    started = distsvc.state.process_start_time(os.getpid())
    assert started is not None and started.isdigit()
    assert distsvc.state.process_start_time(os.getpid()) == started


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_own_placement_is_alive():
    me = os.getpid()
    placement = Placement(host="h", pid=me, started=distsvc.state.process_start_time(me),
                          placed_at=0.0)
    assert distsvc.state.placement_alive(placement)


def test_placement_without_start_time_is_alive_if_the_pid_is():
    assert distsvc.state.placement_alive(
        Placement(host="h", pid=os.getpid(), started=None, placed_at=0.0))


def test_placement_of_a_dead_process_is_not_alive():
    pid = dead_pid()
    assert distsvc.state.process_start_time(pid) is None
    assert not distsvc.state.placement_alive(
        Placement(host="h", pid=pid, started="123", placed_at=0.0))
    assert not distsvc.state.placement_alive(
        Placement(host="h", pid=pid, started=None, placed_at=0.0))


def test_a_process_seen_alive_is_not_read_again_for_a_second_but_its_end_is_seen_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every choice prunes every placement: /proc/PID/stat is read once a second per job, and
    kill(pid, 0) on every look, so a job that ended is dropped by the next choice."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        placement = Placement(host="h", pid=child.pid,
                              started=distsvc.state.process_start_time(child.pid), placed_at=0)
        reads = []
        real = distsvc.state.process_start_time
        monkeypatch.setattr(distsvc.state, "process_start_time",
                            lambda pid: reads.append(pid) or real(pid))
        assert all(distsvc.state.placement_alive(placement) for _ in range(50))
        assert reads == [child.pid]
    finally:
        child.kill()
        child.wait()
    assert not distsvc.state.placement_alive(placement)


def test_placement_of_a_recycled_pid_is_not_alive():
    me = os.getpid()
    started = distsvc.state.process_start_time(me)
    assert started is not None
    wrong = str(int(started) + 1)
    assert not distsvc.state.placement_alive(
        Placement(host="h", pid=me, started=wrong, placed_at=0.0))
