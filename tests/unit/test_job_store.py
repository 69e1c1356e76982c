"""distsvc.jobs.store: job directories, IDs never reused, atomic records, retention."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import distsvc.errors
import distsvc.paths
import proc
from distsvc.jobs import store
from distsvc.jobs.limits import Limits
from distsvc.jobs.record import CorruptRecord, Job
from distsvc.jobs.store import NoSuchJob


def make_job(id: str, **changes: object) -> Job:
    job = Job(id=id, name=None, argv=["true"], cwd="/", env_names=[], limits=Limits(),
              not_enforced={}, isolation=[], placement={"kind": "local"}, state="running",
              created=1000.0 + int(id))
    return dataclasses.replace(job, **changes)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "state" / "distsvc" / "jobs"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- where, and the directory's safety ------------------------------------------------------


def test_jobs_dir_is_in_the_xdg_state_directory(tmp_path):
    assert distsvc.paths.jobs_dir({"XDG_STATE_HOME": str(tmp_path)}) == (
        tmp_path / "distsvc" / "jobs")
    assert distsvc.paths.jobs_dir({"HOME": "/home/u"}) == Path(
        "/home/u/.local/state/distsvc/jobs")
    assert distsvc.paths.jobs_dir({"HOME": "/home/u", "XDG_STATE_HOME": "rel"}) == Path(
        "/home/u/.local/state/distsvc/jobs")


def test_root_is_made_private_and_a_loose_one_tightened(root):
    store.ensure_root(root)
    assert mode(root) == 0o700
    os.chmod(root, 0o755)
    store.new_id(root)
    assert mode(root) == 0o700


def test_a_symlinked_root_is_refused(root, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root.parent.mkdir(parents=True)
    root.symlink_to(elsewhere)
    with pytest.raises(store.StoreError, match="not a directory of yours"):
        store.new_id(root)


# --- IDs ------------------------------------------------------------------------------------


def test_ids_count_up_from_one(root):
    assert [store.new_id(root) for _ in range(3)] == ["1", "2", "3"]


def test_ids_are_never_reused_after_removal(root):
    for _ in range(3):
        store.create(root, make_job(store.new_id(root)))
    store.remove(root, "3")
    store.remove(root, "2")
    assert store.new_id(root) == "4"


def test_a_lost_or_garbled_counter_still_stays_above_existing_jobs(root):
    for _ in range(5):
        store.create(root, make_job(store.new_id(root)))
    (root / "last-id").unlink()
    store.create(root, make_job(store.new_id(root)))
    assert store.ids(root)[0] == "6"
    (root / "last-id").write_text("garbage")
    assert store.new_id(root) == "7"


def test_concurrent_threads_get_distinct_ids(root):
    got: list[str] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(25):
            id = store.new_id(root)
            with lock:
                got.append(id)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got, key=int) == [str(n) for n in range(1, 201)]


TAKER = """
import sys
from pathlib import Path
from distsvc.jobs import store
root = Path(sys.argv[1])
print(" ".join(store.new_id(root) for _ in range(40)))
"""


def test_concurrent_processes_get_distinct_ids(root):
    store.ensure_root(root)
    takers = [subprocess.Popen([sys.executable, "-c", TAKER, str(root)], stdout=subprocess.PIPE,
                               text=True) for _ in range(4)]
    got = []
    for taker in takers:
        out, _ = taker.communicate(timeout=60)
        assert taker.returncode == 0
        got += out.split()
    assert sorted(got, key=int) == [str(n) for n in range(1, 161)]


def test_taking_ids_leaks_no_fds(root):
    store.new_id(root)
    before = proc.fd_count(os.getpid())
    for _ in range(50):
        store.create(root, make_job(store.new_id(root)))
    store.load_all(root)
    assert proc.fd_count(os.getpid()) == before


# --- create, save, load ---------------------------------------------------------------------


def test_create_makes_the_directory_record_and_empty_private_output(root):
    job = store.create(root, make_job(store.new_id(root), name="x"))
    directory = root / job.id
    assert mode(directory) == 0o700
    for stream in ("stdout", "stderr"):
        path = store.output_path(root, job.id, stream)
        assert path == directory / stream
        assert path.read_bytes() == b""
        assert mode(path) == 0o600
    assert mode(directory / "job.json") == 0o600
    assert store.load(root, job.id) == job
    assert sorted(os.listdir(directory)) == ["job.json", "stderr", "stdout"]


def test_create_refuses_an_existing_directory(root):
    store.create(root, make_job("1"))
    with pytest.raises(store.StoreError, match="exists already"):
        store.create(root, make_job("1"))
    assert [n for n in os.listdir(root) if n.startswith(".")] == []


def test_save_replaces_the_record_and_leaves_no_temporary_files(root):
    job = store.create(root, make_job(store.new_id(root)))
    job.state, job.exit_code, job.ended = "exited", 0, 2000.0
    store.save(root, job)
    assert store.load(root, job.id) == job
    assert sorted(os.listdir(root / job.id)) == ["job.json", "stderr", "stdout"]
    assert mode(root / job.id / "job.json") == 0o600


def test_save_of_a_removed_job_is_no_such_job(root):
    job = store.create(root, make_job(store.new_id(root)))
    store.remove(root, job.id)
    with pytest.raises(NoSuchJob):
        store.save(root, job)


def test_unknown_ids_are_one_line_with_usage_status(root):
    store.ensure_root(root)
    with pytest.raises(NoSuchJob) as caught:
        store.load(root, "17")
    assert caught.value.message == "no job 17 (see `distsvc job list`)"
    assert caught.value.exit_status == distsvc.errors.EXIT_NO_SUCH_JOB


@pytest.mark.parametrize("bad", ["../x", "0", "-1", "1/../2", "", "abc", "1\n"])
def test_ids_that_are_not_numbers_are_no_job_and_never_a_path(root, bad):
    store.ensure_root(root)
    with pytest.raises(NoSuchJob) as caught:
        store.load(root, bad)
    assert "\n" not in caught.value.message
    with pytest.raises(NoSuchJob):
        store.remove(root, bad)


@pytest.mark.parametrize(("content", "why"), [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'{"version": 9}', "newer"),
])
def test_corrupt_records_name_the_file_and_why(root, content, why):
    store.create(root, make_job("1"))
    path = root / "1" / "job.json"
    path.write_bytes(content)
    with pytest.raises(CorruptRecord) as caught:
        store.load(root, "1")
    assert caught.value.id == "1" and caught.value.path == str(path)
    assert str(path) in caught.value.message and why in caught.value.message
    assert "\n" not in caught.value.message


def test_a_record_of_another_job_is_corrupt(root):
    store.create(root, make_job("1"))
    store.create(root, make_job("2"))
    (root / "1" / "job.json").write_bytes((root / "2" / "job.json").read_bytes())
    with pytest.raises(CorruptRecord, match="record of job '2'"):
        store.load(root, "1")


def test_a_missing_record_file_is_corrupt_not_absent(root):
    store.create(root, make_job("1"))
    (root / "1" / "job.json").unlink()
    with pytest.raises(CorruptRecord, match="missing"):
        store.load(root, "1")


def test_load_all_is_newest_first_and_reports_corrupt_records(root):
    for _ in range(12):
        store.create(root, make_job(store.new_id(root)))
    (root / "5" / "job.json").write_text("{")
    (root / "stray-file").write_text("x")
    (root / ".new-99-abc").mkdir()
    jobs, corrupt = store.load_all(root)
    assert [j.id for j in jobs] == [str(n) for n in range(12, 0, -1) if n != 5]
    assert [c.id for c in corrupt] == ["5"]


MAKER = """
import sys, time
from pathlib import Path
from distsvc.jobs import store
from distsvc.jobs.limits import Limits
from distsvc.jobs.record import Job
root = Path(sys.argv[1])
for _ in range(60):
    job = Job(id=store.new_id(root), name=None, argv=["true"], cwd="/", env_names=[],
              limits=Limits(), not_enforced={}, isolation=[], placement={}, state="starting",
              created=time.time())
    store.create(root, job)
    job.state = "running"
    store.save(root, job)
    if int(job.id) % 3 == 0:
        store.remove(root, job.id)
"""


def test_readers_never_see_a_half_made_saved_or_removed_job(root):
    store.ensure_root(root)
    maker = subprocess.Popen([sys.executable, "-c", MAKER, str(root)])
    while maker.poll() is None:
        jobs, corrupt = store.load_all(root)
        assert corrupt == []
        assert all(j.state in ("starting", "running") for j in jobs)
    assert maker.wait(timeout=60) == 0
    jobs, corrupt = store.load_all(root)
    assert corrupt == [] and len(jobs) == 40
    assert [n for n in os.listdir(root) if n.startswith(".")] == []


def test_load_all_of_no_directory_is_empty(root):
    assert store.load_all(root) == ([], [])


def test_remove_takes_the_directory_and_everything_in_it(root):
    job = store.create(root, make_job(store.new_id(root)))
    store.output_path(root, job.id, "stdout").write_bytes(b"out")
    store.remove(root, job.id)
    assert not (root / job.id).exists()
    assert [n for n in os.listdir(root) if not n.startswith("last-id")] == []
    with pytest.raises(NoSuchJob):
        store.remove(root, job.id)


def test_sweep_removes_leftovers_of_crashes(root):
    store.ensure_root(root)
    (root / ".removed-3-1-2").mkdir()
    young, old = root / ".new-4-young", root / ".new-5-old"
    young.mkdir()
    old.mkdir()
    os.utime(old, (0, 0))
    store.sweep(root, now=os.lstat(young).st_mtime + 10)
    assert sorted(os.listdir(root)) == [".new-4-young"]


def test_output_path_only_for_the_two_streams(root):
    with pytest.raises(ValueError):
        store.output_path(root, "1", "stdin")


def test_record_is_readable_json_with_its_version(root):
    store.create(root, make_job("1"))
    data = json.loads((root / "1" / "job.json").read_text())
    assert data["version"] == 2 and data["id"] == "1"


# --- retention ------------------------------------------------------------------------------


def test_expired_keeps_the_newest_finished_jobs():
    jobs = [make_job(str(n), state="exited", exit_code=0, ended=5000.0) for n in range(1, 8)]
    jobs.append(make_job("8", state="running"))
    assert sorted(store.expired(jobs, keep=3, max_age=1e9, now=5000.0), key=int) == [
        "1", "2", "3", "4"]
    assert store.expired(jobs, keep=100, max_age=1e9, now=5000.0) == []
    assert len(store.expired(jobs, keep=0, max_age=1e9, now=5000.0)) == 7


def test_expired_removes_finished_jobs_older_than_max_age():
    jobs = [make_job("1", state="exited", exit_code=0, ended=100.0),
            make_job("2", state="failed", reason="x", ended=9000.0),
            make_job("3", state="killed", signal=9, ended=None),    # ended unknown: created
            make_job("4", state="running")]
    assert sorted(store.expired(jobs, keep=100, max_age=1000.0, now=10_000.0)) == ["1", "3"]


def test_running_jobs_never_expire():
    old = make_job("1", state="running", created=0.0)
    assert store.expired([old], keep=0, max_age=1.0, now=1e9) == []


# --- cutting output -------------------------------------------------------------------------


def test_cut_output_keeps_the_last_bytes_behind_a_marker(tmp_path):
    path = tmp_path / "stdout"
    data = bytes(range(256)) * 40          # 10240 bytes, binary
    path.write_bytes(data)
    os.chmod(path, 0o600)
    assert store.cut_output(path, 1000) == 9240
    assert path.read_bytes() == b"[distsvc: 9240 bytes cut here (jobs.max_output)]\n" + data[
        -1000:]
    assert mode(path) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["stdout"]


def test_cut_output_within_the_limit_does_nothing(tmp_path):
    path = tmp_path / "stdout"
    path.write_bytes(b"small\n")
    inode = os.stat(path).st_ino
    assert store.cut_output(path, 6) == 0
    assert path.read_bytes() == b"small\n" and os.stat(path).st_ino == inode


def test_cutting_again_counts_the_total_and_is_idempotent(tmp_path):
    path = tmp_path / "stdout"
    path.write_bytes(b"x" * 5000)
    assert store.cut_output(path, 3000) == 2000
    assert store.cut_output(path, 3000) == 0
    assert store.cut_output(path, 1000) == 2000
    assert path.read_bytes() == b"[distsvc: 4000 bytes cut here (jobs.max_output)]\n" + (
        b"x" * 1000)


def test_cut_output_of_a_large_file_streams_it(tmp_path):
    path = tmp_path / "stdout"
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as out:
        for _ in range(8):
            out.write(chunk)
    assert store.cut_output(path, (3 << 20) + 7) == (5 << 20) - 7
    marker, kept = path.read_bytes().split(b"\n", 1)
    assert marker == f"[distsvc: {(5 << 20) - 7} bytes cut here (jobs.max_output)]".encode()
    assert kept == (chunk * 8)[-((3 << 20) + 7):]


def test_a_reader_of_the_old_file_reads_it_whole(tmp_path):
    path = tmp_path / "stdout"
    path.write_bytes(b"a" * 100 + b"b" * 100)
    with open(path, "rb") as reader:
        store.cut_output(path, 100)
        assert reader.read() == b"a" * 100 + b"b" * 100
    assert path.read_bytes().endswith(b"\n" + b"b" * 100)


def test_cut_job_output_counts_what_was_dropped_in_the_record(root):
    job = store.create(root, make_job(store.new_id(root), state="exited", exit_code=0))
    store.output_path(root, job.id, "stdout").write_bytes(b"o" * 300)
    store.output_path(root, job.id, "stderr").write_bytes(b"e" * 50)
    store.cut_job_output(root, job, 100)
    assert job.output_cut == {"stdout": 200}
    assert store.load(root, job.id).output_cut == {"stdout": 200}
    store.cut_job_output(root, job, 10)
    assert store.load(root, job.id).output_cut == {"stdout": 290, "stderr": 40}


def test_a_running_jobs_output_is_never_cut(root):
    job = store.create(root, make_job(store.new_id(root)))
    with pytest.raises(ValueError, match="only a finished job"):
        store.cut_job_output(root, job, 0)
