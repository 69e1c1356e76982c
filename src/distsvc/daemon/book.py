"""The daemon's jobs: their records in memory, their units watched, their waiters woken.

Records are the truth on disk (jobs/store.py); the book holds them in memory and writes each
change through. One thread watches the running jobs' units (every WATCH_INTERVAL, every
YOUNG_INTERVAL while a job is young: most short jobs end within a second). When a job
ends, its final record is written (fsync) BEFORE its unit is let go, so an exit status is
never lost, and everyone waiting on the book's condition is woken. At the daemon's start the
book reloads every record and brings the unfinished ones up to date: a job that ended while
no daemon ran gets its true status then.

Jobs on hosts are watched by a thread per host (daemon/remote_watch.py), queued jobs started by
the queue (daemon/queue.py) in the book's queue thread and right after each submission and
each end. Every attempt's end goes through `end_attempt`: retention of its output, a retry
queued when one is due, the record written, the unit or placement let go, waiters woken.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
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
    import distsvc.adapters.ssh
    import distsvc.adapters.systemd.units
    import distsvc.config
    import distsvc.jobs.remote
    import distsvc.state

WATCH_INTERVAL = 0.2
YOUNG_INTERVAL = 0.02  # while a job is in its first YOUNG seconds: short jobs are common
YOUNG = 2.0
CAPS_TTL = 600.0  # seconds a host's probed capabilities are trusted
SUBMIT_WAIT = 10.0  # seconds a submission waits for a queue pass in progress (then: queued)
FIRST_LOOK = 3.0  # seconds a daemon's first answer waits for the hosts' first look


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
        # Set by the daemon (new_daemon, configure): what placing jobs on hosts needs.
        self.config: distsvc.config.Config = _default_config()
        self.pool: distsvc.adapters.ssh.Pool | None = None
        self.state_dir: Path = distsvc.paths.state_dir(environ)
        self.environ = dict(environ)
        self.queue_lock = threading.Lock()  # one pass of the queue at a time
        self._origin: str | None = None
        self._caps: dict[str, tuple[float, distsvc.jobs.remote.Caps]] = {}
        self._caps_lock = threading.Lock()
        self._placements: dict[str, distsvc.state.Placement] = {}  # job ID -> its slot
        self._host_watchers: dict[str, threading.Thread] = {}
        self.looked: dict[str, threading.Event] = {}  # host -> its watcher's first look done
        self._ready = threading.Event()  # load() is done
        self.starting: set[str] = set()  # IDs the queue is starting now (guarded by changed)
        self.refreshing: set[str] = set()  # IDs whose accounting is being looked up (changed)
        self._queue_thread: threading.Thread | None = None
        self._queue_wake = threading.Event()

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

    def local_isolation(self, kinds: list[str], best_effort: bool
                        ) -> tuple[list[str], dict[str, str]]:
        """The kinds to apply here and, with best effort, those left out and why."""
        import distsvc.jobs.local

        if not kinds:
            return [], {}
        probed = self.isolation()
        missing = {k: probed.get(k) or "" for k in kinds if probed.get(k) is not None}
        if missing and not best_effort:
            kind, why = next(iter(missing.items()))
            raise distsvc.jobs.local.JobError(
                f"{kind} isolation cannot be had here: {why}; switch it off "
                f"(--no-isolate {kind}) or run with --best-effort")
        return [k for k in kinds if k not in missing], missing

    # -- hosts
    @property
    def origin(self) -> str:
        if self._origin is None:
            self._origin = distsvc.jobs.store.origin(self.root)
        return self._origin

    def host(self, name: str) -> distsvc.config.Host:
        for host in self.config.hosts:
            if host.name == name:
                return host
        raise distsvc.errors.HostUnreachable(
            name, "is no longer in the configuration (put it back to reach its jobs)")

    def cluster(self, name: str) -> distsvc.config.Cluster:
        """Cluster `name` of the configuration; HostUnreachable when it is no longer there
        (its jobs are then shown as their host's: down, until it is put back)."""
        cluster = self.config.cluster(name)
        if cluster is None:
            raise distsvc.errors.HostUnreachable(
                name, "is no longer a cluster of the configuration (put it back to reach its "
                "jobs)")
        return cluster

    def runner(self, name: str) -> distsvc.jobs.remote.Runner:
        """Runs a script with `/bin/sh -s` on host `name` over the daemon's pool, or on the
        shell of cluster `name` (here, or its login node over the pool)."""
        cluster = self.config.cluster(name)
        if cluster is not None:
            import distsvc.actions.cluster

            return distsvc.actions.cluster.runner(cluster, self.config, self.pool)
        host = self.host(name)
        assert self.pool is not None
        sessions = self.pool.sessions(host, self.config.host_key_policy,
                                      self.config.connect_timeout)

        def run(script: str, timeout: float) -> tuple[int, bytes]:
            # One brace group: the shell parses all of it before running any, so a script
            # cut short on the way (a dropped connection) runs nothing, not its first half.
            return sessions.run("exec /bin/sh -s", f"{{\n{script}\n}}\n".encode(), timeout)
        return run

    def host_caps(self, name: str) -> distsvc.jobs.remote.Caps:
        """What host `name` gives jobs: probed once, trusted for CAPS_TTL."""
        import distsvc.jobs.remote

        with self._caps_lock:
            cached = self._caps.get(name)
        if cached is not None and time.monotonic() - cached[0] < CAPS_TTL:
            return cached[1]
        _, out = self.runner(name)(distsvc.jobs.remote.probe_script(self.origin),
                                      distsvc.jobs.remote.SCRIPT_TIMEOUT + 30)
        caps = distsvc.jobs.remote.read_probe(out)
        distsvc.log.get().info("host probed for jobs", host=name, mode=caps.mode,
                               controllers=" ".join(sorted(caps.controllers)),
                               isolation=",".join(k for k, v in caps.isolation.items()
                                                  if v is None))
        with self._caps_lock:
            self._caps[name] = (time.monotonic(), caps)
        return caps

    def cached_caps(self, name: str) -> distsvc.jobs.remote.Caps | None:
        with self._caps_lock:
            cached = self._caps.get(name)
        return cached[1] if cached is not None else None

    def forget_caps(self, name: str) -> None:
        with self._caps_lock:
            self._caps.pop(name, None)

    def saved_environment(self) -> dict[str, str]:
        import distsvc.environment

        try:
            return distsvc.environment.load_saved(
                distsvc.paths.saved_environment_file(self.environ))
        except distsvc.errors.DistsvcError:
            return {}

    def hold(self, job: distsvc.jobs.record.Job,
             placement: distsvc.state.Placement | None = None) -> None:
        """A job running on a host: its record written, its slot kept, its host watched."""
        import distsvc.actions.placement

        host = distsvc.jobs.record.where(job)
        if job.placement.get("kind") == "slurm":
            placement = None  # Slurm's queue: a cluster's job takes no slot of ours
        elif placement is None:
            placement = distsvc.actions.placement.hold(self.state_dir, host, os.getpid(),
                                                       job.started or time.time())
        if placement is not None:
            with self.changed:
                self._placements[job.id] = placement
        self.save(job)
        self.watch_host(host)

    def running_on(self, host: str) -> list[distsvc.jobs.record.Job]:
        """The host's (or cluster's) jobs its watcher looks at: running, or found "starting"
        (a start cut short by the daemon's end) but not being started by the queue now."""
        with self.changed:
            return [j for j in self.jobs.values() if j.state in ("running", "starting")
                    and j.id not in self.starting and distsvc.jobs.record.where(j) == host]

    def watch_host(self, host: str) -> None:
        with self.changed:
            thread = self._host_watchers.get(host)
            if thread is not None and thread.is_alive():
                return
            self.looked.setdefault(host, threading.Event())
            thread = threading.Thread(target=self._watch_host, args=(host,), daemon=True,
                                      name=f"jobs-on-{host}")
            self._host_watchers[host] = thread
            thread.start()

    def _watch_host(self, host: str) -> None:
        import distsvc.daemon.remote_watch

        while True:
            try:
                distsvc.daemon.remote_watch.watch(self, host)
                return
            except Exception:  # the watcher must not die: its jobs would never end here
                distsvc.log.get().exception("host job watcher failed; going on", host=host)
                time.sleep(1.0)

    def stop_watching_host(self, host: str) -> bool:
        """The host's watcher leaves (True) unless a job started there meanwhile."""
        with self.changed:
            if any(j.state in ("running", "starting") and distsvc.jobs.record.where(j) == host
                   for j in self.jobs.values()):
                return False  # one being started there counts: it is watched once started
            if self._host_watchers.get(host) is threading.current_thread():
                del self._host_watchers[host]
            return True

    # -- the queue
    def submit(self, job: distsvc.jobs.record.Job) -> distsvc.errors.DistsvcError | None:
        """A new queued job: into the book, and a pass of the queue at once (most jobs start
        before their submitter hears back); the error if it failed to start."""
        self.add(job)
        errors = self.schedule(wait=SUBMIT_WAIT)
        self._wake_queue()
        return errors.get(job.id)

    def schedule(self, wait: float | None = None) -> dict[str, distsvc.errors.DistsvcError]:
        import distsvc.daemon.queue

        return distsvc.daemon.queue.schedule(self, wait)

    def _wake_queue(self) -> None:
        with self.changed:
            if not any(j.state == "queued" for j in self.jobs.values()):
                return
            self._queue_wake.set()
            if self._queue_thread is None or not self._queue_thread.is_alive():
                self._queue_thread = threading.Thread(target=self._run_queue, daemon=True,
                                                      name="job-queue")
                self._queue_thread.start()

    def _run_queue(self) -> None:
        import distsvc.daemon.queue

        while True:
            self._queue_wake.wait(distsvc.daemon.queue.QUEUE_INTERVAL)
            self._queue_wake.clear()
            try:
                self.schedule()
            except Exception:
                distsvc.log.get().exception("job queue pass failed; going on")
            with self.changed:
                if not any(j.state == "queued" for j in self.jobs.values()):
                    self._queue_thread = None
                    return

    def end_attempt(self, job: distsvc.jobs.record.Job, end: Mapping[str, object]) -> None:
        """An attempt has ended as `end` says (the record's fields: state, exit_code...):
        its output kept within retention, the end (or the retry due, queued) set in the
        record at once under the book's lock, so no waiter sees the job ended before its
        output is final, the record written (before the unit or slot goes), the unit or slot
        let go, waiters woken, the queue told."""
        import distsvc.jobs.local

        with self.changed:
            removed = job.id not in self.jobs
        if not removed and self.retention is not None:  # here, or the mirror of a host's
            _, _, max_output = self.retention
            for stream in ("stdout", "stderr"):
                path = distsvc.jobs.store.output_path(self.root, job.id, stream)
                with contextlib.suppress(FileNotFoundError):
                    cut = distsvc.jobs.store.cut_output(path, max_output)
                    if cut:
                        job.output_cut[stream] = job.output_cut.get(stream, 0) + cut
        placement = dict(job.placement)
        with self.changed:
            for key, value in end.items():
                setattr(job, key, value)
            job.ended = job.ended or time.time()
            job.paused, job.pause_method = False, None
            retry = (not removed and not job.stopped and job.attempt <= job.retries
                     and job.state != "dependency-failed" and job.started is not None
                     and not distsvc.jobs.record.succeeded(job))
            if retry:
                self._retry(job)
        if not removed:
            try:
                self.save(job)
            except distsvc.errors.DistsvcError as error:
                distsvc.log.get().error("could not record a job's end", job=job.id,
                                        error=error.message)
            if job.state in distsvc.jobs.record.FINAL:
                distsvc.jobs.store.remove_env(self.root, job.id)
        if placement.get("kind") == "local" and placement.get("unit"):
            try:
                distsvc.jobs.local.collect(self.manager(), _as_local(job, placement))
            except distsvc.errors.DistsvcError as error:
                distsvc.log.get().warning("could not let the unit go", job=job.id,
                                          error=error.message)
        self._release(job.id)
        distsvc.log.get().info("job ended" if not retry else "job attempt ended", job=job.id,
                               state=job.attempts[-1]["state"] if retry else job.state,
                               exit_code=job.exit_code, signal=job.signal)
        if not retry:
            self.apply_retention()
        self.notify()
        self._wake_queue()

    def _retry(self, job: distsvc.jobs.record.Job) -> None:
        job.attempts.append(distsvc.jobs.record.attempt_summary(job))
        try:
            distsvc.jobs.store.keep_attempt(self.root, job.id, job.attempt)
        except OSError as error:
            distsvc.log.get().warning("could not keep an attempt's output", job=job.id,
                                      error=str(error))
        job.attempt += 1
        job.not_before = time.time() + job.retry_delay
        job.reason = (f"retry {job.attempt - 1} of {job.retries}"
                      + (f", at {time.strftime('%H:%M:%S', time.localtime(job.not_before))}"
                         if job.retry_delay else ""))
        job.state, job.exit_code, job.signal, job.ended = "queued", None, None, None
        job.started, job.cpu_ns, job.memory_peak, job.memory_current = None, None, None, None
        job.paused, job.pause_method, job.host_down_since = False, None, None
        job.placement = {}
        job.skipped = {}

    def _release(self, job_id: str) -> None:
        import distsvc.actions.placement

        with self.changed:
            placement = self._placements.pop(job_id, None)
        if placement is not None:
            distsvc.actions.placement.release(self.state_dir, placement)

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def load(self) -> None:
        """Read every record (once), and bring the unfinished ones up to date. A caller
        that comes while another loads waits for it (the first answers give true states)."""
        with self.changed:
            if self.loaded:
                loading = False
            else:
                loading = self.loaded = True
        if not loading:
            self._ready.wait(FIRST_LOOK + 5.0)
            return
        try:
            self._load()
        finally:
            self._ready.set()

    def _load(self) -> None:
        with self.changed:
            distsvc.jobs.store.sweep(self.root, time.time())
            jobs, corrupt = distsvc.jobs.store.load_all(self.root)
            self.jobs = {job.id: job for job in jobs}
            self.corrupt = [error.message for error in corrupt]
            unfinished = [job for job in jobs if job.state not in distsvc.jobs.record.FINAL]
        for line in self.corrupt:
            distsvc.log.get().error("job record unreadable", error=line)
        for job in unfinished:
            if distsvc.jobs.record.where(job) and job.state in ("running", "starting"):
                try:
                    self.hold(job)  # its slot counted again, its host watched
                except Exception:
                    distsvc.log.get().exception("could not watch a job found again",
                                                job=job.id)
        deadline = time.monotonic() + FIRST_LOOK
        for event in list(self.looked.values()):  # true states for the first answer, unless
            event.wait(max(0.0, deadline - time.monotonic()))  # a host is slow to answer
        if any(j.placement.get("kind") == "local" for j in unfinished):
            self.watch()  # first, so a failing first look is tried again
            self.tick()
        self._wake_queue()

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
            young = any(now - job.created < YOUNG for job in self.unfinished_here())
        return YOUNG_INTERVAL if young else WATCH_INTERVAL

    def _watch(self) -> None:
        while True:
            time.sleep(self._interval())
            try:
                if not self.tick():
                    with self.changed:
                        if not self.unfinished_here():
                            self._watcher = None
                            return
            except Exception:  # the watcher must not die: jobs would never be recorded
                distsvc.log.get().exception("job watcher failed; connecting again")
                self.forget_manager()
                time.sleep(1.0)

    def unfinished(self) -> list[distsvc.jobs.record.Job]:
        return [job for job in self.jobs.values()
                if job.state not in distsvc.jobs.record.FINAL]

    def unfinished_here(self) -> list[distsvc.jobs.record.Job]:
        """Jobs whose unit on this machine the watcher looks at."""
        return [job for job in self.jobs.values()
                if job.state in ("running", "starting") and job.placement.get("kind") == "local"]

    def tick(self) -> bool:
        """One look at every unfinished job; True while some are left."""
        import distsvc.jobs.local

        with self._tick_lock:
            with self.changed:
                unfinished = self.unfinished_here()
            if not unfinished:
                return False
            manager = self.manager()
            ended = []
            for job in unfinished:
                before = job.state
                seen = dataclasses.replace(job)  # its end goes in through end_attempt
                if distsvc.jobs.local.refresh(manager, seen):
                    ended.append((job, seen))
                else:
                    job.state, job.started = seen.state, seen.started
                    if job.state != before:
                        self.save_quietly(job)
                for figure in ("cpu_ns", "memory_peak", "memory_current"):
                    setattr(job, figure, getattr(seen, figure))
            for job, seen in ended:
                try:
                    self.end_attempt(job, ending(seen))
                except Exception:  # one job's trouble (disk full...) must not strand others
                    distsvc.log.get().exception("could not record a job's end", job=job.id)
            return True

    def save_quietly(self, job: distsvc.jobs.record.Job) -> None:
        """save() unless the job was removed meanwhile."""
        with self.changed:
            if job.id not in self.jobs:
                return
        with contextlib.suppress(distsvc.jobs.store.NoSuchJob):
            self.save(job)

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
            gone = [job for job_id in expired if (job := self.jobs.pop(job_id, None))]
        for job_id in expired:
            distsvc.jobs.store.remove(self.root, job_id)
        if any(distsvc.jobs.record.where(j) or j.attempts for j in gone):
            # Not in the caller's thread (a host's watcher, the queue): another host slow
            # to answer must not hold them up.
            threading.Thread(target=self.forget_on_hosts, args=(gone,), daemon=True,
                             name="retention-on-hosts").start()
        return expired

    def forget_on_hosts(self, jobs: Sequence[distsvc.jobs.record.Job]) -> None:
        """Retention on the hosts: the directories of these removed jobs' attempts there go
        too, and any of this origin that ended more than max_age ago (what a host that was
        down at a removal kept). A host that does not answer keeps them until then."""
        import distsvc.jobs.remote

        by_host: dict[str, list[str]] = {}
        clusters: set[str] = set()
        for job in jobs:
            for placement in [job.placement, *(a.get("placement") or {} for a in job.attempts)]:
                if isinstance(placement, dict) and placement.get("dir") and \
                        placement.get("kind") in ("ssh", "slurm"):
                    name = placement.get("host") or placement.get("cluster", "")
                    by_host.setdefault(name, []).append(placement["dir"])
                    if placement.get("kind") == "slurm":
                        clusters.add(name)
        max_age_days = max(1, int((self.retention or (0, 30 * 86400.0, 0))[1] // 86400))
        for host, directories in by_host.items():
            try:  # on a cluster, only these directories (no status files to age there)
                self.runner(host)(distsvc.jobs.remote.remove_script(
                    self.origin, directories, None if host in clusters else max_age_days),
                    distsvc.jobs.remote.SCRIPT_TIMEOUT)
            except (distsvc.errors.DistsvcError, TimeoutError, OSError) as error:
                distsvc.log.get().warning("could not remove jobs' files on their host",
                                          host=host, error=str(error))

    def configure(self, config: distsvc.config.Config) -> None:
        jobs = config.jobs
        self.config = config
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

    def wait(self, ids: Sequence[str], timeout: float, any_of: bool = False) -> bool:
        """Wait up to `timeout` for every job of `ids` (with `any_of`, one of them) to end;
        True when they have."""
        deadline = time.monotonic() + timeout
        settle = any if any_of else all
        with self.changed:
            while True:
                jobs = [self.jobs.get(i) for i in ids]
                if settle(job is None or job.state in distsvc.jobs.record.FINAL
                          for job in jobs):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.changed.wait(remaining)

    def running_count(self) -> int:
        with self.changed:
            return len(self.unfinished())

    def close(self) -> None:
        with self.changed:
            placements = list(self._placements.values())
            self._placements.clear()
        for placement in placements:  # the next daemon holds them again
            with contextlib.suppress(Exception):
                import distsvc.actions.placement

                distsvc.actions.placement.release(self.state_dir, placement)
        with self._manager_lock:
            if self._manager is not None:
                self._manager.close()
                self._manager = None


def _default_config() -> distsvc.config.Config:
    import distsvc.config

    return distsvc.config.Config(source="defaults")


def _as_local(job: distsvc.jobs.record.Job,
              placement: dict[str, str]) -> distsvc.jobs.record.Job:
    """The job as its ended local attempt was (a retry has cleared its placement)."""
    import dataclasses

    return dataclasses.replace(job, placement=placement)


ENDING = ("state", "exit_code", "signal", "reason", "ended")


def ending(job: distsvc.jobs.record.Job) -> dict[str, object]:
    """The fields of `job` that say how an attempt ended, for end_attempt."""
    return {key: getattr(job, key) for key in ENDING}
