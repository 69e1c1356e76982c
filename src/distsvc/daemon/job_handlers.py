"""The daemon's job requests: one small handler per type, added to handlers.HANDLERS.

Each validates its request, acts through the book (daemon/book.py) and the local placement
(jobs/local.py), and answers with job records as JSON (jobs/record.py). `job_wait` and
`job_logs` hold their connection: the first until the jobs end (with heartbeats), the second
only long enough to pass the output files as fds (the client reads them itself, each reader
from its own offset, so no reader ever slows the job or another reader).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import distsvc.adapters.unix
import distsvc.daemon.book
import distsvc.daemon.context
import distsvc.errors
import distsvc.jobs.isolation
import distsvc.jobs.limits
import distsvc.jobs.local
import distsvc.jobs.record
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


def _isolation(book: distsvc.daemon.book.Book, kinds: list[str],
               best_effort: bool) -> tuple[list[str], dict[str, str]]:
    """The kinds to apply and, with best effort, those left out and why."""
    unknown = [k for k in kinds if k not in distsvc.jobs.isolation.KINDS]
    if unknown:
        raise distsvc.errors.UsageError(
            f"--isolate {unknown[0]}: unknown (choose from "
            f"{', '.join(distsvc.jobs.isolation.KINDS)})")
    if not kinds:
        return [], {}
    probed = book.isolation()
    missing = {k: probed.get(k) or "" for k in kinds if probed.get(k) is not None}
    if missing and not best_effort:
        kind, why = next(iter(missing.items()))
        raise distsvc.jobs.local.JobError(
            f"{kind} isolation cannot be had here: {why}; switch it off (--no-isolate {kind}) "
            "or run with --best-effort")
    return [k for k in kinds if k not in missing], missing


def _visible_with_private_tmp(cwd: str, program: str) -> None:
    """Mount isolation gives the job a /tmp and /var/tmp of its own: a working directory or
    program there would be hidden from it. Said before anything starts."""
    for what, path in (("working directory", cwd), ("program", program)):
        real = os.path.realpath(path)
        for top in ("/tmp", "/var/tmp"):
            if real == top or real.startswith(top + "/"):
                raise distsvc.jobs.local.JobError(
                    f"the {what} {path} is under {top}, which mount isolation replaces with "
                    "the job's own; run from another directory, or without it "
                    "(--isolate pid,network)")


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
    limits = distsvc.jobs.limits.merge(daemon.config.jobs.defaults, asked)
    kinds = request.get("isolate")
    if kinds is None:
        kinds = list(daemon.config.jobs.isolate)
    if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
        raise distsvc.protocol.ProtocolError("field 'isolate' must be a list of names")
    program = distsvc.jobs.local.check_command(argv, cwd, env)
    manager = book.manager()
    not_enforced = distsvc.jobs.local.check_limits(
        limits, manager.delegated_controllers(), best_effort)
    applied, left_out = _isolation(book, kinds, best_effort)
    if "mount" in applied:
        _visible_with_private_tmp(cwd, program)
    job = distsvc.jobs.record.Job(
        id=distsvc.jobs.store.new_id(book.root), name=name if isinstance(name, str) else None,
        argv=argv, cwd=cwd, env_names=sorted(env), limits=limits, not_enforced=not_enforced,
        isolation=applied, placement={"kind": "local",
                                      "unit": "", "manager": "user" if manager.user else "system"},
        state="starting", created=time.time())
    job.placement["unit"] = distsvc.jobs.local.unit_name(job.id)
    if left_out:
        job.reason = "isolation left out: " + "; ".join(f"{k}: {v}" for k, v in left_out.items())
    distsvc.jobs.store.create(book.root, job)
    plan = distsvc.jobs.isolation.plan(applied, manager.user)
    log = distsvc.log.get(job=job.id, peer_pid=peer.pid)
    try:
        distsvc.jobs.local.start(manager, book.root, job, env, plan, daemon.config.jobs.all,
                                 program)
    except distsvc.errors.DistsvcError as error:
        job.state, job.reason, job.ended = "failed", error.message, time.time()
        book.save(job)
        book.add(job)
        if not isinstance(error, distsvc.jobs.local.UnitLeftOver):
            distsvc.jobs.local.forget_unit(manager, job)  # a start that failed once loaded
        log.warning("job failed to start", error=error.message)
        raise
    # Into the book (and so the watcher's sight) only once its unit exists: a look before
    # would find no unit and call the job's status lost.
    job.state = "running"
    book.save(job)
    book.add(job)
    book.watch()
    log.info("job started", unit=job.placement["unit"], argv=" ".join(argv)[:200])
    return _answer(job)


def handle_job_list(daemon: Daemon, request: dict[str, Any], peer: Peer) -> Answer:
    book = _book(daemon)
    states = request.get("states")
    with book.changed:
        jobs = sorted(book.jobs.values(), key=lambda j: (j.created, int(j.id) if j.id.isdigit()
                                                         else 0), reverse=True)
    if isinstance(states, list) and states:
        jobs = [j for j in jobs if j.state in states or ("paused" in states and j.paused)]
    answer = _answer(*jobs)
    answer["corrupt"] = list(book.corrupt)
    return answer


def handle_job_status(daemon: Daemon, request: dict[str, Any], peer: Peer) -> Answer:
    return _answer(_book(daemon).get(_id(request)))


def handle_job_logs(daemon: Daemon, request: dict[str, Any], peer: Peer) -> None:
    """The job's record and its output files as fds (stdout, stderr, in that order)."""
    book = _book(daemon)
    job = book.get(_id(request))
    fds = []
    try:
        for stream in STREAMS:
            try:
                fds.append(os.open(distsvc.jobs.store.output_path(book.root, job.id, stream),
                                   os.O_RDONLY | os.O_CLOEXEC))
            except FileNotFoundError:
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
    peer.send({"type": "heartbeat"})
    while not book.wait([job.id for job in jobs], WAIT_BEAT):
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
    try:
        distsvc.jobs.local.stop(book.manager(), job, signum, float(grace))
    except distsvc.errors.DistsvcError:
        _ended_meanwhile(book, job, "stop")
        raise
    book.tick()
    book.wait([job.id], 5.0)
    return _answer(job)


def _ended_meanwhile(book: distsvc.daemon.book.Book, job: distsvc.jobs.record.Job,
                     verb: str) -> None:
    """After a failed systemd call on a job: if it ended just now, say that instead."""
    book.tick()
    if job.state in distsvc.jobs.record.FINAL:
        raise distsvc.jobs.local.JobError(
            f"job {job.id} has ended already ({distsvc.jobs.record.describe_state(job)}): "
            f"nothing to {verb}")


def handle_job_pause(daemon: Daemon, request: dict[str, Any], peer: Peer) -> Answer:
    book = _book(daemon)
    job = _unfinished(book, _id(request), "pause")
    if job.paused:
        raise distsvc.jobs.local.JobError(f"job {job.id} is paused already "
                                          f"(distsvc job resume {job.id})")
    try:
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
    job = _unfinished(book, _id(request), "resume")
    if not job.paused:
        raise distsvc.jobs.local.JobError(f"job {job.id} is not paused")
    method = job.pause_method
    try:
        distsvc.jobs.local.resume(book.manager(), job)
    except distsvc.errors.DistsvcError:
        _ended_meanwhile(book, job, "resume")
        raise
    book.save(job)
    answer = _answer(job)
    answer["method"] = method
    return answer


def _remove(book: distsvc.daemon.book.Book, job: distsvc.jobs.record.Job) -> None:
    if job.state not in distsvc.jobs.record.FINAL:
        raise distsvc.jobs.local.JobError(
            f"job {job.id} is {job.state}: stop it first (distsvc job stop {job.id})")
    with book.changed:
        book.jobs.pop(job.id, None)
    distsvc.jobs.store.remove(book.root, job.id)
    if job.placement.get("kind") == "local":
        # A unit a crash left (its end recorded, the unit not yet let go) goes too.
        distsvc.jobs.local.forget_unit(book.manager(), job)


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
        _remove(book, job)
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
