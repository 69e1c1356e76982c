"""The daemon's job requests: one small handler per type, added to handlers.HANDLERS.

Each validates its request, acts through the book (daemon/book.py) and the job's placement
(jobs/local.py here, jobs/remote.py's scripts on its host), and answers with job records as
JSON (jobs/record.py). `job_start` refuses what cannot run here before any record is made (a
job for this machine: the command, limits, isolation), then submits the job to the queue,
which starts it at once when it may (daemon/queue.py, launch.py). `job_wait` and `job_logs`
hold their connection: the first until the jobs end (with heartbeats), the second only long
enough to pass the output files as fds (the client reads them itself, each reader from its
own offset, so no reader ever slows the job or another reader; a remote job's files are the
mirror the host's watcher keeps complete).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import distsvc.adapters.unix
import distsvc.daemon.book
import distsvc.daemon.context
import distsvc.daemon.launch
import distsvc.daemon.remote_watch
import distsvc.errors
import distsvc.jobs.isolation
import distsvc.jobs.limits
import distsvc.jobs.local
import distsvc.jobs.record
import distsvc.jobs.remote
import distsvc.jobs.sbatch
import distsvc.jobs.store
import distsvc.log
import distsvc.protocol

Daemon = distsvc.daemon.context.Daemon
Peer = distsvc.daemon.context.Peer
Answer = dict[str, Any]
WAIT_BEAT = 2.0  # a waiting client hears a heartbeat this often
MAX_GRACE = 3600.0  # seconds between a stop's signal and its SIGKILL, at most
STREAMS = ("stdout", "stderr")


def _id(request: dict[str, Any]) -> str:
    job_id = request.get("id")
    if not isinstance(job_id, str) or not job_id:
        raise distsvc.protocol.ProtocolError("field 'id' must be a job ID")
    return job_id


def _book(daemon: Daemon) -> distsvc.daemon.book.Book:
    daemon.book.load()
    daemon.book.configure(daemon.config)
    return daemon.book


def _answer(*jobs: distsvc.jobs.record.Job) -> Answer:
    return {"ok": True, "jobs": [distsvc.jobs.record.to_json(job) for job in jobs]}


START_WAIT = 120.0  # seconds a stop waits for a start in progress (probe and start script)
MAX_RETRIES = 100
MAX_RETRY_DELAY = 86400.0


def _number(request: dict[str, Any], key: str, default: float, top: float) -> float:
    value = request.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= top:
        raise distsvc.protocol.ProtocolError(f"field {key!r} must be a number from 0 to {top:g}")
    return float(value)


def _target(daemon: Daemon, request: dict[str, Any]) -> tuple[str, str | None]:
    """Where the job is to go: ("local"|"best"|"host", host name or None)."""
    target = request.get("target")
    if target is None:
        target = "best" if daemon.config.hosts else "local"
    if target not in distsvc.jobs.record.TARGETS:
        raise distsvc.protocol.ProtocolError(
            "field 'target' must be local, best, host or cluster")
    if target == "local":
        return "local", None
    if target == "cluster":
        name = request.get("cluster")
        if not isinstance(name, str) or daemon.config.cluster(name) is None:
            known = ", ".join(c.name for c in daemon.config.clusters) or "none"
            raise distsvc.errors.UsageError(f"--on {name}: no such cluster in the "
                                            f"configuration (clusters: {known})")
        return "cluster", name
    if not daemon.config.hosts:
        raise distsvc.errors.UsageError(
            f"no hosts in the configuration ({daemon.config.source}): a job can only run "
            "here (--local)")
    if target == "best":
        return "best", None
    name = request.get("host")
    if not isinstance(name, str) or name not in {h.name for h in daemon.config.hosts}:
        known = ", ".join(h.name for h in daemon.config.hosts)
        raise distsvc.errors.UsageError(f"--host {name}: no such host in the configuration "
                                        f"(hosts: {known})")
    return "host", name


def handle_job_start(daemon: Daemon, request: dict[str, Any], peer: Peer) -> Answer:
    book = _book(daemon)
    argv = request.get("argv")
    env = request.get("env")
    cwd = request.get("cwd")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise distsvc.protocol.ProtocolError("field 'argv' must be a non-empty list of strings")
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise distsvc.protocol.ProtocolError("field 'env' must map strings to strings")
    if not isinstance(cwd, str) or not os.path.isabs(cwd):
        raise distsvc.protocol.ProtocolError("field 'cwd' must be an absolute path")
    name = request.get("name")
    best_effort = request.get("best_effort") is True
    try:
        asked = distsvc.jobs.limits.from_json(request.get("limits") or {})
    except ValueError as error:
        raise distsvc.protocol.ProtocolError(str(error)) from None
    kinds = request.get("isolate")
    if kinds is not None and (not isinstance(kinds, list)
                              or not all(isinstance(k, str) for k in kinds)):
        raise distsvc.protocol.ProtocolError("field 'isolate' must be a list of names")
    unknown = [k for k in kinds or [] if k not in distsvc.jobs.isolation.KINDS]
    if unknown:
        raise distsvc.errors.UsageError(
            f"--isolate {unknown[0]}: unknown (choose from "
            f"{', '.join(distsvc.jobs.isolation.KINDS)})")
    target, host = _target(daemon, request)
    if target == "cluster":
        limits = _cluster_limits(daemon, host or "", asked, kinds, best_effort)
    else:
        limits = distsvc.jobs.limits.merge(daemon.config.jobs.defaults, asked)
    group = request.get("group")
    if group is not None and (not isinstance(group, str) or not group):
        raise distsvc.protocol.ProtocolError("field 'group' must be a group name")
    after = request.get("after") or []
    if not isinstance(after, list) or not all(isinstance(i, str) for i in after):
        raise distsvc.protocol.ProtocolError("field 'after' must be a list of job IDs")
    for other in after:
        book.get(other)  # an unknown ID: NoSuchJob, before anything is made
    retries = request.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or not (
            0 <= retries <= MAX_RETRIES):
        raise distsvc.protocol.ProtocolError(f"field 'retries' must be 0 to {MAX_RETRIES}")
    retry_delay = _number(request, "retry_delay", 0.0, MAX_RETRY_DELAY)
    if target == "local":
        # Refused here and now, before any record is made: one line, the shell's status.
        distsvc.daemon.launch.check_here(book, argv, cwd, env, limits, kinds, best_effort)
    job = distsvc.jobs.record.Job(
        id=distsvc.jobs.store.new_id(book.root), name=name if isinstance(name, str) else None,
        argv=argv, cwd=cwd, env_names=sorted(env), limits=limits, not_enforced={},
        isolation=[], placement={}, state="queued", created=time.time(),
        target=target, target_host=host, group=group, after=list(dict.fromkeys(after)),
        retries=retries, retry_delay=retry_delay, best_effort=best_effort,
        explicit_limits=sorted(distsvc.jobs.limits.to_json(asked)), isolation_asked=kinds,
        reason="waiting for its turn")
    distsvc.jobs.store.create(book.root, job)
    distsvc.jobs.store.save_env(book.root, job.id, env)
    distsvc.log.get(job=job.id, peer_pid=peer.pid).info(
        "job submitted", target=target, host=host, argv=" ".join(argv)[:200])
    failure = book.submit(job)
    if failure is not None:
        raise failure
    return _answer(job)


def _cluster_limits(daemon: Daemon, name: str, asked: distsvc.jobs.limits.Limits,
                    kinds: list[str] | None, best_effort: bool) -> distsvc.jobs.limits.Limits:
    """A cluster job's limits: those asked over the cluster's defaults (not [jobs]'s, which
    are for what distsvc runs), refused before any record is made when Slurm has no
    counterpart (status 4), as is an isolation asked for (Slurm gives none of distsvc's)."""
    import distsvc.slurm

    cluster = daemon.config.cluster(name)
    assert cluster is not None
    distsvc.slurm.options(cluster, asked)  # raises ClusterCannot for --tasks, --io-*
    if kinds and not best_effort:
        raise distsvc.slurm.ClusterCannot(
            f"--isolate {','.join(kinds)}: cluster {name} cannot give it: Slurm runs the job "
            "without distsvc's isolation; leave it out (--isolate none) or add --best-effort")
    return distsvc.jobs.limits.merge(cluster.defaults, asked)


def handle_job_list(daemon: Daemon, request: dict[str, Any], peer: Peer) -> Answer:
    book = _book(daemon)
    states = request.get("states")
    with book.changed:
        jobs = sorted(book.jobs.values(), key=lambda j: (j.created, int(j.id) if j.id.isdigit()
                                                         else 0), reverse=True)
    if isinstance(states, list) and states:
        jobs = [j for j in jobs if j.state in states or ("paused" in states and j.paused)]
    host = request.get("host")
    if isinstance(host, str):
        jobs = [j for j in jobs if distsvc.jobs.record.where(j) == host
                or (j.state == "queued" and j.target_host == host)]
    answer = _answer(*jobs)
    answer["corrupt"] = list(book.corrupt)
    return answer


def handle_job_status(daemon: Daemon, request: dict[str, Any], peer: Peer) -> Answer:
    book = _book(daemon)
    job = book.get(_id(request))
    distsvc.daemon.remote_watch.refresh_accounting_soon(book, job)  # a Slurm job's, once over
    return _answer(job)


def handle_job_logs(daemon: Daemon, request: dict[str, Any], peer: Peer) -> None:
    """The job's record and its output files as fds (stdout, stderr, in that order)."""
    book = _book(daemon)
    job = book.get(_id(request))
    attempt = request.get("attempt")
    if attempt is not None:
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise distsvc.protocol.ProtocolError("field 'attempt' must be an attempt number")
        if attempt == job.attempt:
            attempt = None
        elif attempt > job.attempt:
            raise distsvc.jobs.local.JobError(
                f"job {job.id} has had {job.attempt} attempt{'s' if job.attempt > 1 else ''} "
                f"so far (see distsvc job status {job.id})")
    fds = []
    try:
        for stream in STREAMS:
            try:
                fds.append(os.open(distsvc.jobs.store.output_path(book.root, job.id, stream,
                                                                  attempt),
                                   os.O_RDONLY | os.O_CLOEXEC))
            except FileNotFoundError:
                if attempt is not None:
                    raise distsvc.jobs.local.JobError(
                        f"job {job.id}: the output of attempt {attempt} is not kept") from None
                raise distsvc.jobs.store.NoSuchJob(job.id) from None  # removed meanwhile
        with peer.send_lock:
            distsvc.adapters.unix.send(peer.sock, _answer(job), fds)
    finally:
        for fd in fds:
            os.close(fd)
    return None


def handle_job_wait(daemon: Daemon, request: dict[str, Any], peer: Peer) -> Answer:
    """Answer once every job asked for has ended, with a heartbeat every WAIT_BEAT seconds
    meanwhile (a client that stops hearing them reconnects and asks again)."""
    book = _book(daemon)
    ids = request.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise distsvc.protocol.ProtocolError("field 'ids' must be a list of job IDs")
    jobs = [book.get(i) for i in dict.fromkeys(ids)]  # unknown IDs refused before waiting
    any_of = request.get("any") is True
    peer.send({"type": "heartbeat"})
    while not book.wait([job.id for job in jobs], WAIT_BEAT, any_of):
        peer.send({"type": "heartbeat"})  # OSError: the client left; so do we
    # The records held, not looked up again: retention or a `remove` may have taken a job
    # from the book as it ended, and its waiter must still hear how it ended.
    return _answer(*jobs)


def _unfinished(book: distsvc.daemon.book.Book, job_id: str,
                verb: str) -> distsvc.jobs.record.Job:
    job = book.get(job_id)
    if job.state in distsvc.jobs.record.FINAL:
        raise distsvc.jobs.local.JobError(
            f"job {job_id} has ended already ({distsvc.jobs.record.describe_state(job)}): "
            f"nothing to {verb}")
    return job


def _remote(book: distsvc.daemon.book.Book, job: distsvc.jobs.record.Job, script: str,
            grace: float = 0.0) -> dict[str, str]:
    """Run one of jobs/remote.py's (or sbatch.py's) scripts for the job on its host (or
    cluster); its key=value answer."""
    host = distsvc.jobs.record.where(job)
    try:
        code, out = book.runner(host)(script, distsvc.jobs.remote.SCRIPT_TIMEOUT + grace)
    except (TimeoutError, OSError) as error:
        raise distsvc.errors.HostUnreachable(host, f"did not answer ({error})") from None
    answer = distsvc.jobs.remote.parse(out)
    if code == distsvc.jobs.sbatch.EXIT_SCANCEL and job.placement.get("kind") == "slurm":
        raise distsvc.errors.CannotRun(f"job {job.id} on cluster {host}: {answer['error']}"
                                       if answer.get("error") else
                                       f"job {job.id} on cluster {host}: scancel failed")
    if code != 0:
        raise distsvc.jobs.local.JobError(
            f"job {job.id} on {host}: {answer.get('error') or f'status {code}'}")
    return answer


def _stop_before_start(book: distsvc.daemon.book.Book, job: distsvc.jobs.record.Job,
                       signum: int) -> bool:
    """Mark the job stopped (never started again, never retried); one still queued ends
    here, as killed without running. True when it has ended (now or before). Waits for a
    start in progress (the queue's launch sees the mark before its start script), without
    waiting on the queue itself, which may be busy with another job's slow host."""
    deadline = time.monotonic() + START_WAIT
    while True:
        with book.changed:
            job.stopped = True
            state, being_started = job.state, job.id in book.starting
        if state in distsvc.jobs.record.FINAL:
            return True
        if state == "queued" and not being_started:
            book.end_attempt(job, {"state": "killed", "signal": signum, "ended": time.time(),
                                   "reason": "stopped while queued: it never ran"})
            return True
        if not being_started or time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def handle_job_stop(daemon: Daemon, request: dict[str, Any], peer: Peer) -> Answer:
    book = _book(daemon)
    job = _unfinished(book, _id(request), "stop")
    signum = request.get("signal", signal.SIGTERM)
    grace = request.get("grace", 10.0)
    if isinstance(signum, bool) or not isinstance(signum, int) or not 0 < signum < signal.NSIG:
        raise distsvc.protocol.ProtocolError("field 'signal' must be a signal number")
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not (
            0 <= grace <= MAX_GRACE):
        raise distsvc.protocol.ProtocolError(
            f"field 'grace' must be 0 to {MAX_GRACE:g} seconds")
    if _stop_before_start(book, job, signum):
        return _answer(job)
    name = signal.Signals(signum).name.removeprefix("SIG")
    try:
        if job.placement.get("kind") == "ssh":
            _remote(book, job, distsvc.jobs.remote.stop_script(
                book.origin, job, name, float(grace)), float(grace))
        elif job.placement.get("kind") == "slurm":
            cluster = book.cluster(job.placement.get("cluster", ""))
            _remote(book, job, distsvc.jobs.sbatch.stop_script(
                cluster, book.origin, job, name, float(grace)), float(grace))
        else:
            distsvc.jobs.local.stop(book.manager(), job, signum, float(grace))
    except distsvc.errors.DistsvcError:
        _ended_meanwhile(book, job, "stop")
        raise
    book.tick()
    book.wait([job.id], 5.0 + (distsvc.daemon.remote_watch.INTERVAL * 4
                               if job.placement.get("kind") in ("ssh", "slurm") else 0.0))
    return _answer(job)


def _not_on_slurm(job: distsvc.jobs.record.Job, verb: str) -> None:
    if job.placement.get("kind") == "slurm":
        raise distsvc.jobs.local.JobError(
            f"job {job.id} runs on cluster {job.placement.get('cluster')}: cannot {verb} it: "
            + distsvc.jobs.sbatch.PAUSE_REFUSAL)


def _ended_meanwhile(book: distsvc.daemon.book.Book, job: distsvc.jobs.record.Job,
                     verb: str) -> None:
    """After a failed systemd call on a job: if it ended just now, say that instead."""
    book.tick()
    if job.state in distsvc.jobs.record.FINAL:
        raise distsvc.jobs.local.JobError(
            f"job {job.id} has ended already ({distsvc.jobs.record.describe_state(job)}): "
            f"nothing to {verb}")


def _running(book: distsvc.daemon.book.Book, job_id: str, verb: str
             ) -> distsvc.jobs.record.Job:
    job = _unfinished(book, job_id, verb)
    if job.state == "queued":
        raise distsvc.jobs.local.JobError(
            f"job {job.id} is queued ({job.reason or 'waiting'}): nothing to {verb} yet"
            + (f" (distsvc job stop {job.id} takes it off the queue)" if verb == "pause"
               else ""))
    return job


def handle_job_pause(daemon: Daemon, request: dict[str, Any], peer: Peer) -> Answer:
    book = _book(daemon)
    job = _running(book, _id(request), "pause")
    _not_on_slurm(job, "pause")
    if job.paused:
        raise distsvc.jobs.local.JobError(f"job {job.id} is paused already "
                                          f"(distsvc job resume {job.id})")
    try:
        if job.placement.get("kind") == "ssh":
            answer = _remote(book, job, distsvc.jobs.remote.pause_script(book.origin, job, True))
            job.paused, job.pause_method = True, answer.get("method", "signals")
        else:
            distsvc.jobs.local.pause(book.manager(), job)
    except distsvc.errors.DistsvcError:
        _ended_meanwhile(book, job, "pause")
        raise
    book.tick()
    if job.state in distsvc.jobs.record.FINAL:
        job.paused, job.pause_method = False, None
    book.save(job)
    return _answer(job)


def handle_job_resume(daemon: Daemon, request: dict[str, Any], peer: Peer) -> Answer:
    book = _book(daemon)
    job = _running(book, _id(request), "resume")
    _not_on_slurm(job, "resume")
    if not job.paused:
        raise distsvc.jobs.local.JobError(f"job {job.id} is not paused")
    method = job.pause_method
    try:
        if job.placement.get("kind") == "ssh":
            _remote(book, job, distsvc.jobs.remote.pause_script(book.origin, job, False))
            job.paused, job.pause_method = False, None
        else:
            distsvc.jobs.local.resume(book.manager(), job)
    except distsvc.errors.DistsvcError:
        _ended_meanwhile(book, job, "resume")
        raise
    book.save(job)
    answer = _answer(job)
    answer["method"] = method
    return answer


def _remove(book: distsvc.daemon.book.Book, job: distsvc.jobs.record.Job,
            on_hosts: bool = True) -> None:
    if job.state not in distsvc.jobs.record.FINAL:
        raise distsvc.jobs.local.JobError(
            f"job {job.id} is {job.state}: stop it first (distsvc job stop {job.id})")
    with book.changed:
        book.jobs.pop(job.id, None)
    distsvc.jobs.store.remove(book.root, job.id)
    if job.placement.get("kind") == "local":
        # A unit a crash left (its end recorded, the unit not yet let go) goes too.
        distsvc.jobs.local.forget_unit(book.manager(), job)
    if on_hosts:
        book.forget_on_hosts([job])


def handle_job_remove(daemon: Daemon, request: dict[str, Any], peer: Peer) -> Answer:
    book = _book(daemon)
    ids = request.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise distsvc.protocol.ProtocolError("field 'ids' must be a list of job IDs")
    jobs = [book.get(i) for i in dict.fromkeys(ids)]
    for job in jobs:
        if job.state not in distsvc.jobs.record.FINAL:
            _remove(book, job)  # raises: nothing is removed when one is still running
    for job in jobs:
        _remove(book, job)
    return {"ok": True, "removed": [job.id for job in jobs]}


def handle_job_clean(daemon: Daemon, request: dict[str, Any], peer: Peer) -> Answer:
    book = _book(daemon)
    with book.changed:
        ended = [j for j in book.jobs.values() if j.state in distsvc.jobs.record.FINAL]
    for job in ended:
        _remove(book, job, on_hosts=False)
    book.forget_on_hosts(ended)  # one session per host, not per job
    return {"ok": True, "removed": sorted((j.id for j in ended), key=_id_order)}


def _id_order(job_id: str) -> tuple[int, str]:
    return (int(job_id), "") if job_id.isdigit() else (0, job_id)


JOB_HANDLERS = {
    "job_start": handle_job_start,
    "job_list": handle_job_list,
    "job_status": handle_job_status,
    "job_logs": handle_job_logs,
    "job_wait": handle_job_wait,
    "job_stop": handle_job_stop,
    "job_pause": handle_job_pause,
    "job_resume": handle_job_resume,
    "job_remove": handle_job_remove,
    "job_clean": handle_job_clean,
}
