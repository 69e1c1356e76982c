"""The daemon's jobs: their records in memory, their units watched, their waiters woken.

Records are the truth on disk (jobs/store.py); the book holds them in memory and writes each
change through. One thread watches the running jobs' units (every WATCH_INTERVAL, every
YOUNG_INTERVAL while a job is young: most short jobs end within a second). When a job
ends, its final record is written (fsync) BEFORE its unit is let go, so an exit status is
never lost, and everyone waiting on the book's condition is woken. At the daemon's start the
book reloads every record and brings the unfinished ones up to date: a job that ended while
no daemon ran gets its true status then.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import distsvc.errors
import distsvc.jobs.record
import distsvc.jobs.store
import distsvc.log
import distsvc.paths

if TYPE_CHECKING:
    import distsvc.adapters.systemd.units
    import distsvc.config

WATCH_INTERVAL = 0.2
YOUNG_INTERVAL = 0.02  # while a job is in its first YOUNG seconds: short jobs are common
YOUNG = 2.0


class Book:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.root: Path = distsvc.paths.jobs_dir(environ)
        self.jobs: dict[str, distsvc.jobs.record.Job] = {}
        self.corrupt: list[str] = []  # one line each: records that could not be read
        self.changed = threading.Condition()  # guards `jobs`; notified when a job ends
        self.loaded = False
        self.retention: tuple[int, float, int] | None = None  # keep, max_age, max_output
        self._manager: distsvc.adapters.systemd.units.Manager | None = None
        self._isolation: dict[str, str | None] | None = None
        self._watcher: threading.Thread | None = None
        self._manager_lock = threading.Lock()
        self._tick_lock = threading.Lock()  # one tick at a time: a job is finished once

    # -- the manager, made on first use: importing pystemd costs, and most daemons never
    # run a job.
    def manager(self) -> distsvc.adapters.systemd.units.Manager:
        with self._manager_lock:
            if self._manager is None:
                import distsvc.adapters.systemd.units

                self._manager = distsvc.adapters.systemd.units.Manager()
            return self._manager

    def forget_manager(self) -> None:
        """After a bus failure: the next call connects again (the bus may have restarted)."""
        with self._manager_lock:
            if self._manager is not None:
                with contextlib.suppress(Exception):
                    self._manager.close()
                self._manager = None

    def isolation(self) -> dict[str, str | None]:
        """Which isolation kinds this manager can give (probed once per daemon)."""
        import distsvc.jobs.isolation

        manager = self.manager()
        with self._manager_lock:
            if self._isolation is None:
                self._isolation = distsvc.jobs.isolation.probe(manager)
                distsvc.log.get().info("isolation probed", **{
                    k: v or "yes" for k, v in self._isolation.items()})
            return self._isolation

    def load(self) -> None:
        """Read every record (once), and bring the unfinished ones up to date."""
        with self.changed:
            if self.loaded:
                return
            distsvc.jobs.store.sweep(self.root, time.time())
            jobs, corrupt = distsvc.jobs.store.load_all(self.root)
            self.jobs = {job.id: job for job in jobs}
            self.corrupt = [error.message for error in corrupt]
            self.loaded = True
            unfinished = [job for job in jobs if job.state not in distsvc.jobs.record.FINAL]
        for line in self.corrupt:
            distsvc.log.get().error("job record unreadable", error=line)
        if unfinished:
            self.watch()  # first, so a failing first look is tried again
            self.tick()

    def watch(self) -> None:
        """Make sure the watcher runs (it ends by itself once no job is unfinished)."""
        with self.changed:
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._watch, daemon=True,
                                                 name="job-watcher")
                self._watcher.start()

    def _interval(self) -> float:
        now = time.time()
        with self.changed:
            young = any(now - job.created < YOUNG for job in self.unfinished())
        return YOUNG_INTERVAL if young else WATCH_INTERVAL

    def _watch(self) -> None:
        while True:
            time.sleep(self._interval())
            try:
                if not self.tick():
                    with self.changed:
                        if not self.unfinished():
                            self._watcher = None
                            return
            except Exception:  # the watcher must not die: jobs would never be recorded
                distsvc.log.get().exception("job watcher failed; connecting again")
                self.forget_manager()
                time.sleep(1.0)

    def unfinished(self) -> list[distsvc.jobs.record.Job]:
        return [job for job in self.jobs.values()
                if job.state not in distsvc.jobs.record.FINAL]

    def tick(self) -> bool:
        """One look at every unfinished job; True while some are left."""
        import distsvc.jobs.local

        with self._tick_lock:
            with self.changed:
                unfinished = self.unfinished()
            if not unfinished:
                return False
            manager = self.manager()
            ended = []
            for job in unfinished:
                before = job.state
                if distsvc.jobs.local.refresh(manager, job):
                    ended.append(job)
                elif job.state != before:
                    self._save_quietly(job)
            for job in ended:
                try:
                    self._finish(manager, job)
                except Exception:  # one job's trouble (disk full...) must not strand others
                    distsvc.log.get().exception("could not record a job's end", job=job.id)
            if ended:
                self.apply_retention()
                with self.changed:
                    self.changed.notify_all()
            return True

    def _save_quietly(self, job: distsvc.jobs.record.Job) -> None:
        with self.changed:
            if job.id not in self.jobs:
                return  # removed meanwhile
        self.save(job)

    def _finish(self, manager: distsvc.adapters.systemd.units.Manager,
                job: distsvc.jobs.record.Job) -> None:
        import distsvc.jobs.local

        with self.changed:
            removed = job.id not in self.jobs
        if not removed:
            if self.retention is not None:
                _, _, max_output = self.retention
                for stream in ("stdout", "stderr"):
                    path = distsvc.jobs.store.output_path(self.root, job.id, stream)
                    cut = distsvc.jobs.store.cut_output(path, max_output)
                    if cut:
                        job.output_cut[stream] = job.output_cut.get(stream, 0) + cut
            self.save(job)  # the final record first: only then may the unit (and status) go
        try:
            distsvc.jobs.local.collect(manager, job)
        except distsvc.errors.DistsvcError as error:
            distsvc.log.get().warning("could not let the unit go", job=job.id,
                                      error=error.message)
        distsvc.log.get().info("job ended", job=job.id, state=job.state,
                               exit_code=job.exit_code, signal=job.signal)

    def save(self, job: distsvc.jobs.record.Job) -> None:
        distsvc.jobs.store.save(self.root, job)

    def apply_retention(self) -> list[str]:
        """Remove the finished jobs beyond the configured number or age."""
        if self.retention is None:
            return []
        keep, max_age, _ = self.retention
        with self.changed:
            expired = distsvc.jobs.store.expired(list(self.jobs.values()), keep, max_age,
                                                 time.time())
            for job_id in expired:
                self.jobs.pop(job_id, None)
        for job_id in expired:
            distsvc.jobs.store.remove(self.root, job_id)
        return expired

    def configure(self, config: distsvc.config.Config) -> None:
        jobs = config.jobs
        self.retention = (jobs.keep, jobs.max_age, jobs.max_output)

    def get(self, job_id: str) -> distsvc.jobs.record.Job:
        self.load()
        with self.changed:
            job = self.jobs.get(job_id)
        if job is None:
            raise distsvc.jobs.store.NoSuchJob(job_id)
        return job

    def add(self, job: distsvc.jobs.record.Job) -> None:
        with self.changed:
            self.jobs[job.id] = job

    def wait(self, ids: Sequence[str], timeout: float) -> bool:
        """Wait up to `timeout` for every job of `ids` to end; True when they all have."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                jobs = [self.jobs.get(i) for i in ids]
                if all(job is None or job.state in distsvc.jobs.record.FINAL for job in jobs):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.changed.wait(remaining)

    def running_count(self) -> int:
        with self.changed:
            return len(self.unfinished())

    def close(self) -> None:
        with self._manager_lock:
            if self._manager is not None:
                self._manager.close()
                self._manager = None
