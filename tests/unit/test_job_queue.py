"""distsvc.daemon.queue: which queued jobs start, in which order, and why the others wait.

The book is real (records on disk under tmp_path); starting a job is replaced by a recorder at
the one seam, `launch.start`, so this is the queue's logic alone."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

import distsvc.config
import distsvc.daemon.book
import distsvc.daemon.launch
import distsvc.daemon.queue
import distsvc.jobs.store
from distsvc.jobs.limits import Limits
from distsvc.jobs.record import Job


@pytest.fixture
def book(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    book = distsvc.daemon.book.Book({"HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path)})
    book.loaded = True
    book._ready.set()
    started: list[str] = []

    def start(book_: Any, job: Job) -> tuple[str, None]:
        started.append(job.id)
        job.state, job.started = "running", time.time()
        return distsvc.daemon.launch.STARTED, None

    monkeypatch.setattr(distsvc.daemon.launch, "start", start)
    book.started = started
    return book


def add(book: Any, **changes: Any) -> Job:
    job = Job(id=distsvc.jobs.store.new_id(book.root), name=None, argv=["true"], cwd="/",
              env_names=[], limits=Limits(), not_enforced={}, isolation=[], placement={},
              state="queued", created=time.time())
    job = dataclasses.replace(job, **changes)
    distsvc.jobs.store.create(book.root, job)
    book.add(job)
    return job


def config(**jobs: Any) -> distsvc.config.Config:
    return distsvc.config.Config(source="test", jobs=distsvc.config.JobsConfig(**jobs),
                                 clusters=(distsvc.config.Cluster(name="hpc"),))


def test_jobs_start_in_order_within_the_total_slots(book: Any) -> None:
    book.configure(config(slots=2))
    jobs = [add(book) for _ in range(4)]
    distsvc.daemon.queue.schedule(book)
    assert book.started == [jobs[0].id, jobs[1].id]
    assert jobs[2].state == "queued" and "all 2 job slots" in (jobs[2].reason or "")


def test_a_group_has_its_own_limit_and_others_pass_it(book: Any) -> None:
    book.configure(config(groups=(("g", 1),)))
    first, second = add(book, group="g"), add(book, group="g")
    other = add(book)
    distsvc.daemon.queue.schedule(book)
    assert book.started == [first.id, other.id]
    assert "group g has 1 jobs running" in (second.reason or "")


def test_dependencies_wait_then_start_or_fail(book: Any) -> None:
    book.configure(config())
    base = add(book, state="running", placement={"kind": "local"})
    ok = add(book, after=[base.id])
    distsvc.daemon.queue.schedule(book)
    assert book.started == [] and f"waiting for job {base.id}" in (ok.reason or "")
    base.state, base.exit_code = "exited", 0
    distsvc.daemon.queue.schedule(book)
    assert book.started == [ok.id]
    failing = add(book, state="exited", exit_code=2)
    doomed = add(book, after=[failing.id])
    distsvc.daemon.queue.schedule(book)
    assert doomed.state == "dependency-failed" and f"job {failing.id} exited 2" in (
        doomed.reason or "")
    gone = add(book, after=["999"])
    distsvc.daemon.queue.schedule(book)
    assert gone.state == "dependency-failed" and "gone" in (gone.reason or "")


def test_a_retry_waits_for_its_delay(book: Any) -> None:
    book.configure(config())
    later = add(book, not_before=time.time() + 60)
    now = add(book, not_before=time.time() - 1)
    distsvc.daemon.queue.schedule(book)
    assert book.started == [now.id] and later.state == "queued"


def test_a_clusters_jobs_take_no_slot_nor_group_place(book: Any) -> None:
    """Slurm's queue is theirs: `[jobs] slots` and group limits neither count nor hold them."""
    book.configure(config(slots=1, groups=(("g", 1),)))
    here = add(book, group="g")
    on_cluster = [add(book, target="cluster", target_host="hpc", group="g") for _ in range(3)]
    last = add(book)
    distsvc.daemon.queue.schedule(book)
    assert book.started == [here.id, *(j.id for j in on_cluster)]
    assert last.state == "queued" and "all 1 job slots" in (last.reason or "")


def test_after_a_job_on_the_same_cluster_is_slurms_to_hold(book: Any) -> None:
    book.configure(config())
    slurm = {"kind": "slurm", "cluster": "hpc", "slurm_id": "41"}
    there = add(book, state="running", target="cluster", target_host="hpc", placement=slurm)
    here = add(book, state="running", placement={"kind": "local"})
    follows = add(book, target="cluster", target_host="hpc", after=[there.id])
    other_cluster = add(book, target="cluster", target_host="other", after=[there.id])
    held = add(book, target="cluster", target_host="hpc", after=[there.id, here.id])
    distsvc.daemon.queue.schedule(book)
    assert book.started == [follows.id]  # submitted at once, with --dependency=afterok:41
    assert distsvc.daemon.launch.slurm_dependencies(book, follows) == (["41"], None)
    assert f"waiting for job {there.id}" in (other_cluster.reason or "")
    assert f"waiting for job {here.id}" in (held.reason or "")
    here.state, here.exit_code = "exited", 0
    distsvc.daemon.queue.schedule(book)
    assert book.started == [follows.id, held.id]
    there.state, there.exit_code = "exited", 0  # over: no dependency left to give Slurm
    assert distsvc.daemon.launch.slurm_dependencies(book, held) == ([], None)
    retrying = add(book, state="running", target="cluster", target_host="hpc", retries=1,
                   placement={**slurm, "slurm_id": "43"})
    later = add(book, target="cluster", target_host="hpc", after=[retrying.id])
    distsvc.daemon.queue.schedule(book)  # its retry would be another Slurm job: ours waits
    assert later.id not in book.started and f"waiting for job {retrying.id}" in (
        later.reason or "")


def test_a_same_cluster_dependency_that_failed_meanwhile_is_not_dropped(
        book: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The queue lets a job go while its same-cluster dependency runs (Slurm is to hold it);
    that one fails before the submission reads the dependencies again: the job ends
    dependency-failed, nothing submitted, instead of going to Slurm without the dependency."""
    book.configure(config())
    slurm = {"kind": "slurm", "cluster": "hpc", "slurm_id": "41"}
    there = add(book, state="running", target="cluster", target_host="hpc", placement=slurm)
    follows = add(book, target="cluster", target_host="hpc", after=[there.id])
    submitted: list[str] = []
    monkeypatch.setattr(book, "runner", lambda name: lambda script, timeout: (
        submitted.append(script), (0, b""))[1])

    def start(book_: Any, job: Job) -> tuple[str, None]:  # the queue let it go; meanwhile
        there.state, there.exit_code = "exited", 1           # its dependency failed
        return distsvc.daemon.launch._start_cluster(book_, job, {})

    monkeypatch.setattr(distsvc.daemon.launch, "start", start)
    distsvc.daemon.queue.schedule(book)
    assert submitted == [] and follows.state == "dependency-failed"
    assert f"job {there.id} " in (follows.reason or "")
