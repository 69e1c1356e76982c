"""The daemon's host state in memory (daemon/hoststate.py) and the merge it writes with:
write-behind, what other processes wrote picked up, nothing lost when the daemon stops."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import distsvc.actions.placement
import distsvc.config
import distsvc.daemon.hoststate
import distsvc.state
import helpers
from distsvc.probe import Measurement
from distsvc.state import FileStore, HostState, Placement, State

T0 = 1_700_000_000.0


def up(measured_at: float, load1: float = 0.5, last_used: float | None = None) -> HostState:
    return HostState(state=distsvc.state.UP, measured_at=measured_at, access_ms=1.0,
                     measurement=Measurement(load1=load1, cpus=2), last_used=last_used)


def placed(host: str, n: int) -> Placement:
    return Placement(host=host, pid=n, started=None, placed_at=T0 + n)


def in_file(directory: Path) -> State:
    return distsvc.state.read(directory)


# --- merge -----------------------------------------------------------------------------------


def test_a_host_only_one_side_changed_takes_that_sides_entry() -> None:
    base = State(hosts={"a": up(T0), "b": up(T0)})
    ours = State(hosts={"a": up(T0 + 5, load1=2.0), "b": up(T0)})
    theirs = State(hosts={"a": up(T0), "b": up(T0 + 7, load1=3.0), "c": up(T0 + 1)})
    merged = distsvc.state.merge(base, ours, theirs)
    assert merged.hosts == {"a": up(T0 + 5, load1=2.0), "b": up(T0 + 7, load1=3.0),
                            "c": up(T0 + 1)}


def test_a_host_both_sides_measured_takes_the_newer_measurement_and_the_later_use() -> None:
    base = State(hosts={"a": up(T0)})
    ours = State(hosts={"a": up(T0 + 5, load1=2.0, last_used=T0 + 9)})
    theirs = State(hosts={"a": up(T0 + 7, load1=3.0, last_used=T0 + 1)})
    merged = distsvc.state.merge(base, ours, theirs)
    assert merged.hosts == {"a": up(T0 + 7, load1=3.0, last_used=T0 + 9)}


def test_a_refusal_of_ours_replaces_an_unchanged_measurement() -> None:
    base = State(hosts={"a": up(T0)})
    ours = State(hosts={"a": distsvc.state.refused("host key changed")})
    merged = distsvc.state.merge(base, ours, base.copy())
    assert merged.hosts["a"].state == distsvc.state.REFUSED


def test_placements_added_on_both_sides_are_kept_and_removed_on_either_stay_removed() -> None:
    base = State(placements=[placed("a", 1), placed("a", 2), placed("a", 3)])
    ours = State(placements=[placed("a", 1), placed("a", 3), placed("b", 10)])  # -2 +10
    theirs = State(placements=[placed("a", 1), placed("a", 2), placed("b", 20)])  # -3 +20
    merged = distsvc.state.merge(base, ours, theirs)
    assert sorted(p.pid for p in merged.placements) == [1, 10, 20]


def test_merging_again_what_is_merged_already_changes_nothing() -> None:
    base = State(hosts={"a": up(T0)}, placements=[placed("a", 1), placed("a", 2)])
    ours = State(hosts={"a": up(T0 + 5)}, placements=[placed("a", 1), placed("b", 10)])
    theirs = State(hosts={"a": up(T0), "c": up(T0 + 2)},
                   placements=[placed("a", 2), placed("c", 20)])
    once = distsvc.state.merge(base, ours, theirs)
    assert sorted(p.pid for p in once.placements) == [10, 20]
    twice = distsvc.state.merge(base, ours, once)
    assert twice.hosts == once.hosts
    assert sorted(twice.placements, key=lambda p: p.pid) == sorted(
        once.placements, key=lambda p: p.pid)


def test_a_corrupt_file_read_as_empty_gets_our_state_back() -> None:
    ours = State(hosts={"a": up(T0)}, placements=[placed("a", 1)])
    merged = distsvc.state.merge(ours, ours, State())
    assert merged == State()  # what we did not change is theirs: the file is the truth
    changed = State(hosts={"a": up(T0 + 1)}, placements=[placed("a", 1), placed("a", 2)])
    merged = distsvc.state.merge(ours, changed, State())
    assert merged.hosts == {"a": up(T0 + 1)}
    assert merged.placements == [placed("a", 2)]


# --- the store in memory ---------------------------------------------------------------------


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def memory(directory: Path) -> Iterator[distsvc.daemon.hoststate.MemoryStore]:
    store = distsvc.daemon.hoststate.MemoryStore(directory)
    store.open()
    yield store
    store.close()


def test_a_directory_is_the_file_until_a_daemon_serves_it_and_again_after(
        directory: Path) -> None:
    assert distsvc.state.store(directory) == FileStore(directory)
    store = distsvc.daemon.hoststate.MemoryStore(directory)
    store.open()
    assert distsvc.state.store(directory) is store
    store.close()
    assert distsvc.state.store(directory) == FileStore(directory)


def test_opening_reads_the_file(directory: Path) -> None:
    with FileStore(directory).update() as state:
        state.hosts["a"] = up(T0)
        state.placements.append(placed("a", 1))
    store = distsvc.daemon.hoststate.MemoryStore(directory)
    store.open()
    try:
        assert store.snapshot() == State(hosts={"a": up(T0)}, placements=[placed("a", 1)])
    finally:
        store.close()


def test_a_change_is_seen_at_once_and_written_behind(
        memory: distsvc.daemon.hoststate.MemoryStore, directory: Path) -> None:
    with memory.update() as state:
        state.hosts["a"] = up(T0)
        state.placements.append(placed("a", 1))
    assert memory.snapshot().placements == [placed("a", 1)]
    helpers.wait_for(lambda: in_file(directory).placements == [placed("a", 1)], 10,
                     "the placement in the file")
    assert in_file(directory).hosts == {"a": up(T0)}
    text = (directory / distsvc.state.STATE_FILE).read_text()
    assert distsvc.state.decode(text) == memory.snapshot()  # versioned, whole


def test_a_change_in_a_failed_block_is_not_kept(
        memory: distsvc.daemon.hoststate.MemoryStore) -> None:
    with pytest.raises(RuntimeError), memory.update() as state:
        state.placements.append(placed("a", 1))
        raise RuntimeError("no")
    assert memory.snapshot() == State()


def test_a_snapshot_is_the_callers_to_change(
        memory: distsvc.daemon.hoststate.MemoryStore) -> None:
    with memory.update() as state:
        state.placements.append(placed("a", 1))
    state.placements.clear()  # what update() gave stays the caller's
    snapshot = memory.snapshot()
    snapshot.placements.append(placed("a", 2))
    snapshot.hosts["x"] = up(T0)
    assert memory.snapshot() == State(placements=[placed("a", 1)])


def test_what_another_process_wrote_is_seen_by_the_next_look(
        memory: distsvc.daemon.hoststate.MemoryStore, directory: Path) -> None:
    with memory.update() as state:
        state.placements.append(placed("a", 1))
    memory.flush()  # not writing now: a look while the daemon writes leaves others' to after
    with FileStore(directory).update() as state:  # a daemon-less client, as it does it
        state.placements.append(placed("b", 2))
        state.hosts["b"] = up(T0 + 3)
    snapshot = memory.snapshot()
    assert sorted(p.pid for p in snapshot.placements) == [1, 2]
    assert snapshot.hosts == {"b": up(T0 + 3)}


def test_writing_behind_keeps_what_another_process_wrote_meanwhile(
        memory: distsvc.daemon.hoststate.MemoryStore, directory: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with memory.update() as state:
        state.hosts["a"] = up(T0)
        state.placements.append(placed("a", 1))
    memory.flush()
    # The other process writes between our looks: we change the state without looking at
    # the file (a write of ours merges onto it under the lock).
    monkeypatch.setattr(memory, "_pick_up", lambda: None)
    with FileStore(directory).update() as state:
        state.placements.remove(placed("a", 1))  # a client pruned or released it
        state.placements.append(placed("b", 2))
        state.hosts["b"] = up(T0 + 3)
        state.hosts["a"] = up(T0 + 4, load1=9.0)  # and measured `a` anew
    with memory.update() as state:
        state.placements.append(placed("c", 3))
        state.hosts["c"] = up(T0 + 5)
    memory.flush()
    written = in_file(directory)
    assert sorted(p.pid for p in written.placements) == [2, 3]
    assert written.hosts == {"a": up(T0 + 4, load1=9.0), "b": up(T0 + 3), "c": up(T0 + 5)}


def test_stopping_writes_what_is_left_and_later_changes_go_to_the_file_at_once(
        directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distsvc.daemon.hoststate, "WRITE_BEHIND", 3600.0)
    store = distsvc.daemon.hoststate.MemoryStore(directory)
    store.open()
    with store.update() as state:
        state.placements.append(placed("a", 1))
    helpers.wait_for(lambda: in_file(directory).placements, 10, "the first write")
    with store.update() as state:  # the writer waits an hour before its next write
        state.placements.append(placed("a", 2))
    time.sleep(0.2)
    assert in_file(directory).placements == [placed("a", 1)]
    store.close()
    assert in_file(directory).placements == [placed("a", 1), placed("a", 2)]
    assert not [t for t in threading.enumerate() if t.name == "state-writer" and t.is_alive()]
    with store.update() as state:  # a handler that outlived the loop
        state.placements.remove(placed("a", 1))
    assert in_file(directory).placements == [placed("a", 2)]


OUTSIDE_WRITER = """
import sys, time
from pathlib import Path
import distsvc.state as s

directory, worker, rounds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for n in range(rounds):
    with s.store(directory).update() as state:  # no daemon here: the file
        state.placements.append(s.Placement(host=f"out{worker}", pid=n, started=None,
                                            placed_at=0.0))
    time.sleep(0.002)
"""


def test_nothing_is_lost_between_the_daemon_and_other_processes(
        memory: distsvc.daemon.hoststate.MemoryStore, directory: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads of the daemon place and release while processes without one write the file,
    and the daemon writes behind as often as it can: at the end the file and the daemon's
    memory hold exactly what was placed and not released, on both sides."""
    monkeypatch.setattr(distsvc.daemon.hoststate, "WRITE_BEHIND", 0.0)
    rounds, threads, writers = 150, 4, 3
    outside = [subprocess.Popen([sys.executable, "-c", OUTSIDE_WRITER, str(directory),
                                 str(n), str(rounds)], stderr=subprocess.PIPE)
               for n in range(writers)]

    def daemon_thread(worker: int) -> None:
        for n in range(rounds):
            kept, released = placed(f"in{worker}", 2 * n), placed(f"in{worker}", 2 * n + 1)
            with memory.update() as state:
                state.placements += [kept, released]
            with memory.update() as state:
                state.placements.remove(released)

    running = [threading.Thread(target=daemon_thread, args=(n,)) for n in range(threads)]
    try:
        for thread in running:
            thread.start()
        for thread in running:
            thread.join(100)
        for process in outside:
            process.wait(100)
    finally:
        helpers.reap(outside)
    for process in outside:
        assert process.returncode == 0, process.stderr.read().decode() if process.stderr else ""
        if process.stderr:
            process.stderr.close()
    expected = sorted([(f"in{w}", 2 * n) for w in range(threads) for n in range(rounds)]
                      + [(f"out{w}", n) for w in range(writers) for n in range(rounds)])
    memory.flush()
    assert sorted((p.host, p.pid) for p in memory.snapshot().placements) == expected
    assert sorted((p.host, p.pid) for p in in_file(directory).placements) == expected


# --- `best` queries through the tally ---------------------------------------------------------


def config_of(*names: str, slots: int | None = None,
              max_age: float = 3600) -> distsvc.config.Config:
    return distsvc.config.from_mapping(
        {"hosts": [{"name": n, **({} if slots is None else {"slots": slots})} for n in names],
         "max_age": max_age}, "test", None)


def test_the_tally_answers_query_after_query_as_choose_from_memory(
        memory: distsvc.daemon.hoststate.MemoryStore, directory: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same answers and the same state as choose_from_memory on the file, over a stream
    of queries long enough to reach the cap per host, with placements expiring, a job's
    process ending, a slot limit and measurements going stale on the way."""
    clock = [T0 + 30]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    ended = Placement(host="b", pid=2**22 + 12345, started="1", placed_at=T0 - 5)
    alive = Placement(host="c", pid=os.getpid(), started=distsvc.state.process_start_time(
        os.getpid()), placed_at=T0 - 100)
    start = State(
        hosts={"a": up(T0, load1=0.2), "b": up(T0 + 1, load1=0.9), "c": up(T0 - 200, 0.1),
               "x": up(T0)},
        placements=[placed_anonymous("a", T0 - 50), ended, alive,
                    placed_anonymous("x", T0 - 1), placed_anonymous("c", T0 - 250),
                    placed_anonymous("a", T0 + 20)])
    reference = tmp_path / "reference"
    for where in (directory, reference):
        with distsvc.state.locked(where):
            distsvc.state.write(where, start)
    memory.snapshot()  # picks the file up
    config = config_of("a", "b", "c", slots=30)
    answers, expected = [], []
    for step in range(400):
        clock[0] += 0.25 if step % 50 else 11.0  # placements expire on the way
        if step == 300:
            config = config_of("a", "b", "c", slots=30, max_age=1)  # stale: both decline
        choice = memory.place_anonymous(config, clock[0])
        answers.append(None if choice is None else choice.host.name)
        choice = distsvc.actions.placement.choose_from_memory(config, reference, pid=0)
        expected.append(None if choice is None else choice.host.name)
    assert answers == expected
    assert len(set(answers[:300])) == 3 and answers[-1] is None
    mine, theirs = memory.snapshot(), distsvc.state.read(reference)
    assert mine == theirs


@pytest.mark.parametrize("seed", range(6))
def test_the_tally_breaks_ties_and_skips_full_hosts_as_choose_from_memory(
        memory: distsvc.daemon.hoststate.MemoryStore, directory: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Many hosts whose scores tie (within ranking.TIE_WIDTH) or are equal, access times
    that differ, are equal or are unknown, different CPU counts and slot limits that fill:
    the tally keeps the known hosts sorted and looks at the first groups of ties only, and
    must still answer exactly as the full ranking does, query after query."""
    import random

    rng = random.Random(seed)
    clock = [T0 + 1]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    names = [f"h{i:02d}" for i in range(40)]
    hosts = {}
    for name in names:
        hosts[name] = HostState(
            state=distsvc.state.UP, measured_at=T0 - rng.choice([0, 5, 30]),
            access_ms=rng.choice([None, 1.0, 1.0, 2.5, rng.uniform(0.5, 3)]),
            measurement=Measurement(load1=rng.choice([0.0, 0.0, 0.02, 0.04, 0.5, 1.0]),
                                    cpus=rng.choice([1, 2, 4])))
    start = State(hosts=hosts, placements=[
        placed_anonymous(rng.choice(names), T0 - rng.uniform(0, 50)) for _ in range(20)])
    reference = tmp_path / "reference"
    for where in (directory, reference):
        with distsvc.state.locked(where):
            distsvc.state.write(where, start)
    memory.snapshot()  # picks the file up
    config = distsvc.config.from_mapping(
        {"hosts": [{"name": n, **({"slots": rng.choice([1, 2, 3])} if rng.random() < 0.4
                                  else {})} for n in names],
         "max_age": 3600}, "test", None)
    answers, expected = [], []
    for _ in range(300):
        clock[0] += rng.choice([0.01, 0.3, 2.0])
        choice = memory.place_anonymous(config, clock[0])
        answers.append(None if choice is None else choice.host.name)
        choice = distsvc.actions.placement.choose_from_memory(config, reference, pid=0)
        expected.append(None if choice is None else choice.host.name)
    assert answers == expected
    assert len(set(answers)) > 10
    assert memory.snapshot() == distsvc.state.read(reference)


def placed_anonymous(host: str, placed_at: float) -> Placement:
    return Placement(host=host, pid=0, started=None, placed_at=placed_at)


def test_the_tally_expires_a_placement_without_any_other_change(
        memory: distsvc.daemon.hoststate.MemoryStore) -> None:
    """No update in between: the tally itself notices the first expiry and counts afresh."""
    now = time.time()
    with memory.update() as state:
        state.hosts.update({"a": up(now, load1=0.0), "b": up(now, load1=1.2)})
    config = config_of("a", "b")
    first = [memory.place_anonymous(config, now + i * 0.1) for i in range(2)]
    assert [c.host.name for c in first if c is not None] == ["a", "a"]  # a: 0 + 1/2 < 0.6
    third = memory.place_anonymous(config, now + 0.2)
    assert third is not None and third.host.name == "b"  # a: 1.0 now
    after = now + distsvc.state.ANONYMOUS_PLACEMENT_TTL + 0.05  # the first has expired
    fourth = memory.place_anonymous(config, after)
    assert fourth is not None and fourth.host.name == "a"  # a: 1/2 again, b: 0.6 + 1/2
    assert len(memory.snapshot().placements) == 4 - 1


def test_the_tally_declines_when_another_process_wrote_and_then_counts_what_it_wrote(
        memory: distsvc.daemon.hoststate.MemoryStore, directory: Path) -> None:
    now = time.time()
    with memory.update() as state:
        state.hosts.update({"a": up(now, load1=0.0), "b": up(now, load1=0.4)})
    memory.flush()
    config = config_of("a", "b")
    first = memory.place_anonymous(config, now)
    assert first is not None and first.host.name == "a"
    assert memory.place_anonymous(config, now) is not None  # the same tally: one stat
    with memory.update() as state:
        state.placements.pop()  # one answer alone, and a tally built again
    memory.flush()  # written (a look while a write of ours is under way does not read)
    # Another process (a daemon-less client, the scan service) measures a as busy.
    with distsvc.state.locked(directory):
        theirs = distsvc.state.read(directory)
        theirs.hosts["a"] = up(now + 1, load1=1.9)
        distsvc.state.write(directory, theirs)
    # Declined (a worker reads the file), not the answer of the tally before (a: 0.5, b: 0.6).
    assert memory.place_anonymous(config, now + 1) is None
    assert memory.snapshot().hosts["a"].measurement == up(now + 1, load1=1.9).measurement
    second = memory.place_anonymous(config, now + 2)
    assert second is not None and second.host.name == "b"
    assert [p.host for p in memory.snapshot().placements] == ["a", "b"]


def test_the_version_last_read_or_written_is_held_open_so_its_inode_cannot_come_back(
        directory: Path) -> None:
    """ext4 often gives a file written by rename the inode number of the version before; the
    write-behind trusts "same inode, size and mtime" only because the daemon holds the
    version it last saw open (MemoryStore._hold), which no other version can then share."""
    def held_inode(store: distsvc.daemon.hoststate.MemoryStore) -> int | None:
        held = store._held
        return None if held is None else os.fstat(held).st_ino

    with FileStore(directory).update() as state:
        state.hosts["a"] = up(T0)
    store = distsvc.daemon.hoststate.MemoryStore(directory)
    store.open()
    path = directory / distsvc.state.STATE_FILE
    try:
        assert held_inode(store) == path.stat().st_ino  # the version read
        with store.update() as state:
            state.placements.append(placed("a", 1))
        store.flush()
        assert held_inode(store) == path.stat().st_ino  # the version written
        with FileStore(directory).update() as state:  # another process's version
            state.placements.append(placed("a", 2))
        assert held_inode(store) != path.stat().st_ino
        assert len(store.snapshot().placements) == 2  # a look merged it in
        assert held_inode(store) == path.stat().st_ino
        held = store._held
    finally:
        store.close()
    assert store._held is None
    assert held is not None
    try:  # closed with the store (its number may have been given to another file since)
        target = os.readlink(f"/proc/self/fd/{held}")
    except OSError:
        target = None
    assert target != str(path)
