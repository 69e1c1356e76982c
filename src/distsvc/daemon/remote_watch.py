"""Watching the jobs on one host: a thread per host with running jobs (see Book.watch_host),
and per Slurm cluster (the same loop, jobs/sbatch.py's monitor script: Slurm's state and
accounting instead of a unit's or supervisor's).

Each look is one SSH session running jobs/remote.monitor_script for all of the host's running
jobs: their state, and each stream's bytes past what the local mirror holds, appended to the
mirror (the job's local stdout/stderr files, which `job logs` reads as for a local job). An
ended job is finished in this order, so that nothing is lost: its status kept on the host
and what it left ended there (collect), the mirror completed to the streams' final sizes,
the final record written here; only then is its placement let go.

A host that does not answer leaves its jobs running in their records, with `host_down_since`
set (shown as "unknown (host down since ...)"); they are looked at again every DOWN_INTERVAL
and come back as they are once it answers.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

import distsvc.daemon.launch
import distsvc.errors
import distsvc.jobs.record
import distsvc.jobs.remote
import distsvc.jobs.sbatch
import distsvc.jobs.store
import distsvc.log

if TYPE_CHECKING:
    import distsvc.daemon.book

INTERVAL = 0.5        # between looks at a host's running jobs
YOUNG_INTERVAL = 0.1  # while one of them is in its first YOUNG seconds
YOUNG = 2.0
DOWN_INTERVAL = 2.0   # between looks at a host that did not answer
PENDING_INTERVAL = 3.0  # between looks at a cluster whose jobs all wait in Slurm's queue
MAX_ROUNDS = 64       # looks to complete an ended job's mirror before trying again later
QUICK_LOOK, SLOW_LOOK = 1.0, 5.0  # seconds: a look's budget grows below, shrinks above
Job = distsvc.jobs.record.Job
STREAMS = ("stdout", "stderr")
FETCH_NOTHING = 0  # a look's budget when only the state is wanted (at least FETCH_MIN)


def _mirror_sizes(book: distsvc.daemon.book.Book, job: Job) -> dict[str, int]:
    sizes = {}
    for stream in STREAMS:
        try:
            sizes[stream] = os.stat(distsvc.jobs.store.output_path(book.root, job.id,
                                                                    stream)).st_size
        except FileNotFoundError:
            sizes[stream] = 0
    return sizes


def _append(book: distsvc.daemon.book.Book, job: Job, look: distsvc.jobs.remote.Look) -> bool:
    """The fetched bytes onto the mirror, each where the mirror ends; True when the mirror
    now holds every byte the host had."""
    complete = True
    for stream in STREAMS:
        path = distsvc.jobs.store.output_path(book.root, job.id, stream)
        offset, data = look.data.get(stream, (0, b""))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            return False  # removed meanwhile
        try:
            if data and os.fstat(fd).st_size == offset:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size < look.sizes.get(stream, 0):
            complete = False
    return complete


def _slurm(jobs: list[Job]) -> bool:
    """Whether these jobs (of one host or cluster) are on a Slurm cluster."""
    return bool(jobs) and jobs[0].placement.get("kind") == "slurm"


def _look(book: distsvc.daemon.book.Book, host: str, jobs: list[Job],
          budget: int = distsvc.jobs.remote.LOOK_MAX, before: str = ""
          ) -> dict[str, distsvc.jobs.remote.Look]:
    """One look at `jobs` (`before`: a script to run first in the same session)."""
    sized = [(job, _mirror_sizes(book, job)) for job in jobs]
    if _slurm(jobs):
        monitor = distsvc.jobs.sbatch.monitor_script(book.cluster(host), book.origin,
                                                     sized, budget, time.time())
    else:
        monitor = distsvc.jobs.remote.monitor_script(book.origin, sized, budget)
    script = before + "\n" + monitor
    code, out = book.runner(host)(script, distsvc.jobs.remote.SCRIPT_TIMEOUT)
    if code != 0 or not out.rstrip().endswith(b"monitor=done"):
        raise distsvc.errors.HostUnreachable(host, "the job monitor was cut short")
    down = distsvc.jobs.sbatch.controller_down(out) if _slurm(jobs) else None
    if down is not None:  # nothing learnt of its jobs: as a host that does not answer
        raise distsvc.errors.HostUnreachable(host, f"slurmctld not answering: {down}")
    return distsvc.jobs.remote.read_monitor(out)


def _finish(book: distsvc.daemon.book.Book, host: str, job: Job,
            look: distsvc.jobs.remote.Look,
            end: tuple[str, int | None, int | None, str | None],
            budget: int = distsvc.jobs.remote.LOOK_MAX) -> None:
    runner = book.runner(host)
    if _slurm([job]):
        collect = distsvc.jobs.sbatch.collect_script(book.cluster(host), book.origin, job,
                                                     end)
    else:
        collect = distsvc.jobs.remote.collect_script(book.origin, job, look)
    for _ in range(MAX_ROUNDS):  # the last bytes, written before the end was seen
        began = time.monotonic()
        final = _look(book, host, [job], budget, collect).get(job.id)
        budget = adapt(budget, time.monotonic() - began, True)
        collect = ""  # once: the status kept there, what the job left ended
        if final is None:
            continue
        if _append(book, job, final) and all(
                not data for _, data in final.data.values()):
            break
    else:
        return  # not complete yet: the next look finishes it (the status is kept there)
    state, exit_code, signal, reason = end
    outcome: dict[str, object] = {"state": state, "exit_code": exit_code, "signal": signal,
                                  "ended": time.time(), "host_down_since": None}
    if reason is not None:
        outcome["reason"] = reason
    elif job.reason == distsvc.daemon.launch.UNCERTAIN_START:
        outcome["reason"] = None  # it did start: the doubt is over
    max_output = book.config.jobs.max_output
    if any(size > max_output for size in final.sizes.values()):
        try:  # retention on the host too (the mirror here is cut by end_attempt)
            runner(distsvc.jobs.remote.cut_script(book.origin, job, max_output),
                   distsvc.jobs.remote.SCRIPT_TIMEOUT)
        except (distsvc.errors.DistsvcError, TimeoutError, OSError) as error:
            distsvc.log.get(job=job.id).warning("could not cut the output on the host",
                                                error=str(error))
    book.end_attempt(job, outcome)


def adapt(budget: int, took: float, behind: bool) -> int:
    """The next look's byte budget: halved after a slow look, doubled after a quick one
    that left bytes behind."""
    if took > SLOW_LOOK:
        return max(distsvc.jobs.remote.LOOK_MAX // 4, budget // 2)
    if behind and took < QUICK_LOOK:
        return min(distsvc.jobs.remote.LOOK_MOST, budget * 2)
    return budget


def _down(book: distsvc.daemon.book.Book, jobs: list[Job], why: str) -> None:
    now = time.time()
    for job in jobs:
        if job.host_down_since is None or job.placement.get("down_reason") != why:
            job.host_down_since = job.host_down_since or now
            job.placement["down_reason"] = why
            book.save_quietly(job)
            distsvc.log.get(job=job.id).warning("job's host not answering", error=why)
    book.notify()


def watch(book: distsvc.daemon.book.Book, host: str) -> None:
    """The host's watcher thread: until none of its jobs runs.

    A look's byte budget doubles (up to LOOK_MOST) after a quick look that filled it and
    halves after a slow one: a fast link follows output at its speed, a slow one still
    makes progress within the script timeout."""
    budget = distsvc.jobs.remote.LOOK_MAX
    while True:
        jobs = book.running_on(host)
        if not jobs:
            if book.stop_watching_host(host):
                return
            time.sleep(YOUNG_INTERVAL)  # a job being started there: watched once it is
            continue
        looked = book.looked.get(host)
        began = time.monotonic()
        try:
            looks = _look(book, host, jobs, budget)
        except (distsvc.errors.DistsvcError, TimeoutError, OSError) as error:
            _down(book, jobs, error.reason if isinstance(error, distsvc.errors.HostUnreachable)
                  else str(error))
            if looked is not None:
                looked.set()
            time.sleep(DOWN_INTERVAL)
            continue
        pending = False
        for job in jobs:
            look = looks.get(job.id)
            if look is None:
                pending = True
                continue
            changed = job.host_down_since is not None
            job.host_down_since = None
            job.placement.pop("down_reason", None)
            complete = _append(book, job, look)
            if _slurm([job]):
                changed = distsvc.jobs.sbatch.figures(job, look) or changed
                end = distsvc.jobs.sbatch.ended(job, look, time.time())
            else:
                distsvc.jobs.remote.figures(job, look)
                end = distsvc.jobs.remote.ended(job, look)
            try:
                if end is not None:
                    _finish(book, host, job, look, end, budget)
                    continue
            except (distsvc.errors.DistsvcError, TimeoutError, OSError) as error:
                distsvc.log.get(job=job.id).warning("could not finish the job yet",
                                                    error=str(error))
            if job.state == "starting" and look.state.get("gone") != "yes":
                job.state, changed = "running", True  # a start cut short that did happen
            if changed:
                book.save_quietly(job)
                book.notify()
            pending = pending or not complete
        if looked is not None:
            looked.set()
        budget = adapt(budget, time.monotonic() - began, pending)
        if pending:
            continue
        now = time.time()
        young = any(now - (job.started or job.created) < YOUNG for job in jobs)
        if young:
            time.sleep(YOUNG_INTERVAL)
        elif _slurm(jobs) and all(j.placement.get("slurm_state") == "PENDING" for j in jobs):
            _wait_pending(book, host, {j.id for j in jobs})
        else:
            time.sleep(INTERVAL)


def _wait_pending(book: distsvc.daemon.book.Book, host: str, ids: set[str]) -> None:
    """Up to PENDING_INTERVAL while a cluster's jobs all wait in Slurm's queue (a look costs
    the cluster's shell a second of CPU with hundreds of them), less once its set of jobs
    changes (one submitted, stopped, removed): that is looked at at once."""
    deadline = time.monotonic() + PENDING_INTERVAL
    while time.monotonic() < deadline:
        time.sleep(YOUNG_INTERVAL)
        if {j.id for j in book.running_on(host)} != ids:
            return


ACCOUNTING_WAIT = 120.0  # seconds after its end a job's accounting is looked up again


def refresh_accounting_soon(book: distsvc.daemon.book.Book, job: Job) -> None:
    """refresh_accounting on a thread of its own (one per job at a time): `status` answers
    at once with what the record has, not after a look at the cluster (seconds on a slow
    login node, or a cluster that does not answer); the next `status` has the figures."""
    if not _wants_accounting(job):
        return
    with book.changed:
        if job.id in book.refreshing:
            return
        book.refreshing.add(job.id)

    def refresh() -> None:
        try:
            refresh_accounting(book, job)
        finally:
            with book.changed:
                book.refreshing.discard(job.id)

    threading.Thread(target=refresh, name=f"accounting-{job.id}", daemon=True).start()


def _wants_accounting(job: Job) -> bool:
    """Whether an ended Slurm job's accounting is worth looking up again (slurmdbd records
    the steps' figures a moment after the end the watcher saw): until sacct has the job, and
    for ACCOUNTING_WAIT after its end while MaxRSS is missing (a sub-second job never has
    one)."""
    place = job.placement
    if place.get("kind") != "slurm" or job.state not in distsvc.jobs.record.FINAL \
            or not place.get("slurm_id") or place.get("accounting", "").startswith("none"):
        return False
    age = time.time() - (job.ended or 0.0)
    if place.get("accounting") == "sacct" and (job.memory_peak is not None
                                               or age > ACCOUNTING_WAIT):
        return False
    return age <= 86400


def refresh_accounting(book: distsvc.daemon.book.Book, job: Job) -> None:
    """An ended Slurm job's accounting looked up again, if _wants_accounting; the record
    changed under the book's lock (a `status` reads it meanwhile)."""
    if not _wants_accounting(job):
        return
    try:
        look = _look(book, distsvc.jobs.record.where(job), [job], FETCH_NOTHING).get(job.id)
    except (distsvc.errors.DistsvcError, TimeoutError, OSError) as error:
        distsvc.log.get(job=job.id).info("accounting not looked up", error=str(error))
        return
    if look is None:
        return
    with book.changed:
        changed = distsvc.jobs.sbatch.figures(job, look)
    if changed:
        book.save_quietly(job)
