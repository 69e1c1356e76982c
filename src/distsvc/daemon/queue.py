"""The job queue: which queued jobs may start now, in the order they were submitted.

A queued job starts when its turn has come:

- its retry's delay is over (`not_before`),
- every job of `after` has succeeded (exited 0); if one ended otherwise, or is gone, the job
  ends as "dependency-failed" without running,
- its group (`[jobs.groups]`) has fewer jobs running than the group's limit,
- fewer jobs run than `[jobs] slots`, everywhere together,

and then `launch.start` places it: here, on its host, or on the best host with a free slot
(a host's `slots` count `distsvc-run` commands and jobs alike). A job for a Slurm cluster
is handed to sbatch as soon as its dependencies allow (those on the same cluster at once, as
Slurm dependencies): `[jobs] slots` and group limits are for what distsvc runs, and neither
count nor hold a cluster's jobs, whose queue is Slurm's. A job that cannot be placed
yet keeps its place in the queue with the reason; jobs after it may still start (a job
waiting for a busy host does not hold up one that may go elsewhere).

`schedule` makes one pass; the book calls it when a job is submitted or ends, and its queue
thread every QUEUE_INTERVAL while jobs are queued (slots also free up as `distsvc-run`
commands end, and hosts come back).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import distsvc.errors
import distsvc.jobs.record

if TYPE_CHECKING:
    import distsvc.daemon.book

QUEUE_INTERVAL = 1.0
Job = distsvc.jobs.record.Job


def _id_order(job: Job) -> tuple[int, str]:
    return (int(job.id), "") if job.id.isdigit() else (0, job.id)


def _dependencies(book: distsvc.daemon.book.Book, job: Job) -> str | None:
    """None when every job of `after` succeeded; "wait: why" or "fail: why" otherwise."""
    import distsvc.daemon.launch

    for other_id in job.after:
        other = book.jobs.get(other_id)
        failed = distsvc.daemon.launch.dependency_failed(other_id, other)
        if failed is not None:
            return f"fail: {failed}"
        assert other is not None
        if other.state not in distsvc.jobs.record.FINAL and \
                distsvc.daemon.launch.same_cluster(job, other):
            continue  # Slurm holds it for that one (--dependency=afterok)
        if other.state not in distsvc.jobs.record.FINAL:
            return f"wait: waiting for job {other_id} ({distsvc.jobs.record.describe_state(other)})"
    return None


def _running(jobs: list[Job]) -> list[Job]:
    """The jobs that hold a slot of ours: not a cluster's (Slurm's queue is theirs)."""
    return [j for j in jobs if j.state not in distsvc.jobs.record.FINAL and j.state != "queued"
            and j.target != "cluster"]


def schedule(book: distsvc.daemon.book.Book, wait: float | None = None
             ) -> dict[str, distsvc.errors.DistsvcError]:
    """One pass over the queue; the errors of the jobs that failed to start, by ID.

    With `wait`, gives up (nothing done) when another pass holds the queue longer: a host
    slow to answer a start must not hold a submitter's answer for long (its job stays queued
    for the queue thread)."""
    if not book.queue_lock.acquire(timeout=-1 if wait is None else wait):
        return {}
    try:
        return _pass(book)
    finally:
        book.queue_lock.release()


def _pass(book: distsvc.daemon.book.Book) -> dict[str, distsvc.errors.DistsvcError]:
    errors: dict[str, distsvc.errors.DistsvcError] = {}
    with book.changed:
        everyone = list(book.jobs.values())
    queued = sorted((j for j in everyone if j.state == "queued"), key=_id_order)
    if not queued:
        return errors
    config = book.config
    groups = dict(config.jobs.groups)
    running = _running(everyone)
    now = time.time()
    full: dict[tuple[object, ...], str] = {}  # targets found without a slot this pass
    for job in queued:
        if job.not_before is not None and now < job.not_before:
            continue
        with book.changed:
            dependencies = _dependencies(book, job)
        if dependencies is not None:
            verdict, _, why = dependencies.partition(": ")
            if verdict == "fail":
                book.end_attempt(job, {"state": "dependency-failed", "reason": why,
                                       "ended": time.time()})
                continue
            _say(book, job, why)
            continue
        limit = groups.get(job.group or "") if job.target != "cluster" else None
        if limit is not None and sum(j.group == job.group for j in running) >= limit:
            _say(book, job, f"group {job.group} has {limit} jobs running (its limit)")
            continue
        if config.jobs.slots is not None and len(running) >= config.jobs.slots and \
                job.target != "cluster":
            _say(book, job, f"all {config.jobs.slots} job slots (jobs.slots) are taken")
            continue
        import distsvc.daemon.launch

        target = (job.target, job.target_host, *sorted(job.skipped))
        if target in full:  # the same answer as a moment ago: not asked again this pass
            _say(book, job, full[target])
            continue
        with book.changed:  # a stop decides under the same lock: stopped, or being started
            if job.stopped or job.state != "queued":
                continue
            book.starting.add(job.id)
        try:
            outcome, error = distsvc.daemon.launch.start(book, job)
        finally:
            with book.changed:
                book.starting.discard(job.id)
        if outcome == distsvc.daemon.launch.STARTED and job.target != "cluster":
            running.append(job)
        elif outcome == distsvc.daemon.launch.WAITING and job.target != "local":
            full[target] = job.reason or "waiting for a free slot"
        elif error is not None:
            errors[job.id] = error
    return errors


def _say(book: distsvc.daemon.book.Book, job: Job, why: str) -> None:
    if job.reason != why:
        job.reason = why
        book.save(job)
