"""daemon/remote_watch: an ended remote attempt's output and retention (review8 findings).

The "host" is this machine's /bin/sh with its own HOME under tmp_path, given to the book at
its one seam for scripts (`Book.runner`): the scripts of jobs/remote.py run for real, only the
SSH transport is left out. Each test says what a correct daemon does; those marked xfail
(strict) show a defect of the current code and pass once it is fixed (then drop the mark);
the first three showed defects main has fixed since (759bf79) and stay as regression tests.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import distsvc.config
import distsvc.daemon.book
import distsvc.daemon.launch
import distsvc.daemon.remote_watch
import distsvc.jobs.remote
import distsvc.jobs.store
from distsvc.jobs.limits import Limits
from distsvc.jobs.record import Job

HOST = "h1"
MAX_OUTPUT = 10


def _host_runner(home: Path) -> distsvc.jobs.remote.Runner:
    def run(script: str, timeout: float) -> tuple[int, bytes]:
        done = subprocess.run(["/bin/sh", "-s"], input=script.encode(), capture_output=True,
                              timeout=timeout, check=False,
                              env={"HOME": str(home), "PATH": os.environ["PATH"]})
        return done.returncode, done.stdout
    return run


@pytest.fixture
def book(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    here = tmp_path / "here"
    book = distsvc.daemon.book.Book({"HOME": str(here), "XDG_STATE_HOME": str(here / "state")})
    book.loaded = True
    book._ready.set()
    book.configure(distsvc.config.Config(
        source="test", jobs=distsvc.config.JobsConfig(max_output=MAX_OUTPUT)))
    book.host_home = tmp_path / "host"
    book.host_home.mkdir()
    monkeypatch.setattr(book, "runner", lambda name: _host_runner(book.host_home))
    # The queue is not under test: a retry stays queued unless a test starts it.
    monkeypatch.setattr(distsvc.daemon.launch, "start",
                        lambda book_, job: (distsvc.daemon.launch.WAITING, None))
    return book


def _attempt_dir(book: Any, job_id: str, attempt: int) -> Path:
    return (book.host_home / ".local/state/distsvc/jobs-from" / book.origin
            / f"{job_id}.{attempt}")


def _on_host(book: Any, job: Job, stdout: bytes, status: str | None) -> Path:
    """Attempt `job.attempt`'s directory on the host as a supervisor leaves it."""
    directory = _attempt_dir(book, job.id, job.attempt)
    directory.mkdir(parents=True)
    (directory / "stdout").write_bytes(stdout)
    (directory / "stderr").write_bytes(b"")
    if status is not None:
        (directory / "status").write_text(status + "\n")
    job.placement = {"kind": "ssh", "host": HOST, "mode": "supervisor", "dir": str(directory)}
    return directory


def _running_job(book: Any, **changes: Any) -> Job:
    job = Job(id=distsvc.jobs.store.new_id(book.root), name=None, argv=["sh"], cwd="/",
              env_names=[], limits=Limits(), not_enforced={}, isolation=[], placement={},
              state="running", created=time.time(), started=time.time(), **changes)
    distsvc.jobs.store.create(book.root, job)
    book.add(job)
    return job


def _mirror(book: Any, job: Job, attempt: int | None = None) -> bytes:
    return distsvc.jobs.store.output_path(book.root, job.id, "stdout", attempt).read_bytes()


def _placing_on(host: distsvc.config.Host) -> Any:
    """actions.placement.place_now as if `host` always had a free slot (recorded for real)."""
    import distsvc.actions.placement

    def place_now(config: Any, directory: Path, pool: Any, exclude: Any, pid: int,
                  only: Any = None) -> Any:
        if host.name in exclude:
            return None
        placement = distsvc.actions.placement.hold(directory, host.name, pid, time.time())
        return distsvc.actions.placement.Choice(host, placement)
    return place_now


def test_a_remote_jobs_mirror_is_cut_to_max_output(book: Any) -> None:
    job = _running_job(book)
    _on_host(book, job, b"x" * 100, "supervisor 0")
    distsvc.daemon.remote_watch.watch(book, HOST)
    assert job.state == "exited" and job.exit_code == 0
    assert job.output_cut.get("stdout") == 100 - MAX_OUTPUT
    assert _mirror(book, job).endswith(b"x" * MAX_OUTPUT)
    assert len(_mirror(book, job)) < 100


def test_a_failed_attempt_with_a_retry_is_cut_on_the_host(book: Any) -> None:
    job = _running_job(book, retries=1)
    first = _on_host(book, job, b"y" * 100, "supervisor 3")
    distsvc.daemon.remote_watch.watch(book, HOST)  # returns once no job runs on the host
    assert job.state == "queued" and job.attempt == 2
    assert _mirror(book, job, 1).endswith(b"\n" + b"y" * MAX_OUTPUT)
    assert (first / "stdout").read_bytes() == b"y" * MAX_OUTPUT


def test_the_retrys_running_output_is_never_cut(book: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    job = _running_job(book, retries=1)
    _on_host(book, job, b"y" * 100, "supervisor 3")
    second: dict[str, Any] = {}

    def start_at_once(book_: Any, queued: Job) -> tuple[str, None]:
        # The queue thread winning the race: attempt 2 placed, running, 50 bytes written.
        second["dir"] = _on_host(book, queued, b"z" * 50, None)
        second["inode"] = os.stat(second["dir"] / "stdout").st_ino
        queued.state, queued.started = "running", time.time()
        return distsvc.daemon.launch.STARTED, None

    monkeypatch.setattr(distsvc.daemon.launch, "start", start_at_once)
    monkeypatch.setattr(book, "_wake_queue", book.schedule)  # the pass runs at once
    look = distsvc.daemon.remote_watch._look(book, HOST, [job])[job.id]
    end = distsvc.jobs.remote.ended(job, look)
    assert end is not None
    distsvc.daemon.remote_watch._finish(book, HOST, job, look, end)
    assert job.attempt == 2 and job.state == "running"
    stdout = second["dir"] / "stdout"
    assert os.stat(stdout).st_ino == second["inode"], "attempt 2's stdout was replaced"
    assert stdout.read_bytes() == b"z" * 50


@pytest.mark.xfail(strict=True, reason="review8: launch._start_on "
                   "catches only HostUnreachable/HostCannot around book.host_caps: a probe "
                   "that times out escapes the queue pass and the slot place_now took for "
                   "the job is never released")
def test_a_probe_that_times_out_gives_the_slot_back(book: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import distsvc.actions.placement
    import distsvc.state

    monkeypatch.undo()  # the real launch.start
    host = distsvc.config.Host(name=HOST, slots=2)
    book.configure(distsvc.config.Config(source="test", hosts=(host,)))
    book.pool = object()  # never used: the probe is the part that fails

    def probe_times_out(name: str) -> Any:
        raise TimeoutError("no answer within 60 s")

    monkeypatch.setattr(distsvc.actions.placement, "place_now", _placing_on(host))
    monkeypatch.setattr(book, "host_caps", probe_times_out)
    job = _running_job(book, target="host", target_host=HOST)
    job.state, job.started = "queued", None
    distsvc.jobs.store.save_env(book.root, job.id, {})
    escaped: BaseException | None = None
    try:
        distsvc.daemon.launch.start(book, job)
    except TimeoutError as error:
        escaped = error
    held = distsvc.state.read(book.state_dir).placements
    assert held == [], f"the slot taken for the job is never given back: {held}"
    assert escaped is None, f"out of the queue pass: {escaped!r}"
    assert job.state in ("queued", "failed")


@pytest.mark.xfail(strict=True, reason="review8: launch._start_on treats the start script's "
                   "exit 11 (this attempt's directory exists: a start that reached the host "
                   "before the daemon died) as 'refused' and starts the job on the next host: "
                   "run twice, the first copy never watched")
def test_an_attempt_found_started_on_a_host_is_not_started_on_another(
        book: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import distsvc.actions.placement
    import distsvc.jobs.isolation

    monkeypatch.undo()  # the real launch.start
    hosts = tuple(distsvc.config.Host(name=n) for n in ("h1", "h2"))
    book.configure(distsvc.config.Config(source="test", hosts=hosts))
    book.pool = object()
    homes = {h.name: tmp_path / h.name for h in hosts}
    for home in homes.values():
        home.mkdir()
    monkeypatch.setattr(book, "runner", lambda name: _host_runner(homes[name]))

    def caps(name: str) -> distsvc.jobs.remote.Caps:
        return distsvc.jobs.remote.Caps(
            "supervisor", "none here", frozenset(), None,
            {k: "none here" for k in distsvc.jobs.isolation.KINDS},
            f"{homes[name]}/.local/state/distsvc/jobs-from/{book.origin}")

    def place_now(config: Any, directory: Path, pool: Any, exclude: Any, pid: int,
                  only: Any = None) -> Any:
        for host in hosts:  # h1 is the best, then h2
            if host.name not in exclude:
                placement = distsvc.actions.placement.hold(directory, host.name, pid,
                                                           time.time())
                return distsvc.actions.placement.Choice(host, placement)
        return None

    monkeypatch.setattr(book, "host_caps", caps)
    monkeypatch.setattr(distsvc.actions.placement, "place_now", place_now)
    job = _running_job(book, target="best")
    job.state, job.started = "queued", None
    distsvc.jobs.store.save_env(book.root, job.id, {})
    # What a daemon that died during this job's start left on h1: the attempt's directory
    # (and its command running there); here the record still says queued.
    (homes["h1"] / ".local/state/distsvc/jobs-from" / book.origin / f"{job.id}.1").mkdir(
        parents=True)
    outcome, _ = distsvc.daemon.launch.start(book, job)
    placed = dict(job.placement)
    job.state, job.exit_code = "exited", 0  # the host watcher this started leaves
    assert placed.get("host") != "h2", (
        f"started again on h2 ({outcome}); h1 skipped: {job.skipped}")


@pytest.mark.xfail(strict=True, reason="review8: jobs/remote.ended reads a command's own exit "
                   "200 (supervisor) or 200-243 (a systemd unit whose main process is our "
                   "/bin/sh run, command_started never given) as 'failed to start'")
def test_a_commands_own_exit_status_200_is_an_exit() -> None:
    job = Job(id="7", name=None, argv=["sh", "-c", "exit 203"], cwd="/", env_names=[],
              limits=Limits(), not_enforced={}, isolation=[], state="running", created=1.0,
              placement={"kind": "ssh", "host": HOST, "mode": "systemd", "dir": "/d/7.1",
                         "unit": "u"})
    look = distsvc.jobs.remote.Look({"status": "systemd failed exit-code 1 203"}, {}, {})
    assert distsvc.jobs.remote.ended(job, look) == ("exited", 203, None, None)
    job.placement["mode"] = "supervisor"
    look = distsvc.jobs.remote.Look({"status": "supervisor 200"}, {}, {})
    assert distsvc.jobs.remote.ended(job, look) == ("exited", 200, None, None)


@pytest.mark.xfail(strict=True, reason="review8: queue.schedule holds book.queue_lock across "
                   "launch.start's SSH I/O (probe up to 60 s, start up to 30 s, per job): "
                   "stopping a queued job (job_handlers._stop_queued) waits for a hung host "
                   "without bound (submissions now give up after SUBMIT_WAIT)")
def test_stopping_a_queued_job_does_not_wait_for_another_jobs_host(
        book: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import distsvc.actions.placement
    import distsvc.daemon.job_handlers
    import distsvc.errors

    monkeypatch.undo()  # the real launch.start
    host = distsvc.config.Host(name=HOST)
    book.configure(distsvc.config.Config(source="test", hosts=(host,)))
    book.pool = object()
    hung = threading.Event()

    def probe_hangs(name: str) -> Any:
        hung.wait(60)  # a host that accepted the session and does not answer
        raise distsvc.errors.HostUnreachable(name, "did not answer")

    monkeypatch.setattr(distsvc.actions.placement, "place_now", _placing_on(host))
    monkeypatch.setattr(book, "host_caps", probe_hangs)
    first = _running_job(book, target="host", target_host=HOST)
    first.state, first.started = "queued", None
    distsvc.jobs.store.save_env(book.root, first.id, {})
    other = _running_job(book, not_before=time.time() + 3600)  # a retry waiting its delay
    other.state, other.started = "queued", None
    passing = threading.Thread(target=book.schedule, daemon=True)
    passing.start()
    stopping = threading.Thread(target=distsvc.daemon.job_handlers._stop_queued,
                                args=(book, other, 15), daemon=True)
    try:
        stopping.start()
        stopping.join(20)  # generous: it only writes a record
        stopped = not stopping.is_alive()
    finally:
        hung.set()
        passing.join(60)
        stopping.join(60)
        for job in (first, other):
            job.state = "failed"
        if book._queue_thread is not None:  # woken by the stop: it leaves, none queued
            book._queue_thread.join(30)
    assert stopped, "the stop of a queued job waited for another job's host"
