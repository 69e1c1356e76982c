"""Starting one attempt of a job where its target says: here (jobs/local.py), on a host
(jobs/remote.py), the host chosen as for `distsvc-run` and the job counted there at once, or
on a Slurm cluster (jobs/sbatch.py: submitted at once, no slot of ours taken).

`start` is called by the queue (daemon/queue.py) with the job's turn come (its dependencies
met, a slot free in its group and in all). It returns what became of the job:

- STARTED: running; the record says where,
- WAITING: still queued (every usable host is at its slot limit, or none is reachable now);
  `reason` says which, and the queue tries again,
- FAILED: it cannot run (the command is not found, a limit cannot be enforced...): the job
  ended as "failed" with the reason; the error is returned for a caller to pass on.

A host that cannot be reached is skipped for the next (and marked so in the shared state, as
`distsvc-run` does); one that cannot run this job (no way to enforce an asked limit, the
command not found there) is skipped with the reason in the record's `skipped`. Nothing is
ever started twice: an attempt whose start may have reached the host is recorded as
running there, and the host's watcher finds out what became of it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import distsvc.errors
import distsvc.jobs.isolation
import distsvc.jobs.limits
import distsvc.jobs.local
import distsvc.jobs.record
import distsvc.jobs.remote
import distsvc.jobs.store
import distsvc.log

if TYPE_CHECKING:
    import distsvc.actions.placement
    import distsvc.daemon.book

STARTED, WAITING, FAILED = "started", "waiting", "failed"
# The reason of a job whose start may or may not have reached its host, until its watcher
# has looked (then its end, if any, replaces it).
UNCERTAIN_START = "its start on the host was cut short; what became of it is looked up there"
Job = distsvc.jobs.record.Job


def visible_with_private_tmp(cwd: str, program: str) -> str | None:
    """Why mount isolation would hide the working directory or program (its own /tmp and
    /var/tmp), or None. Paths as given: a host's are not resolved from here."""
    for what, path in (("working directory", cwd), ("program", program)):
        for top in ("/tmp", "/var/tmp"):
            if path == top or path.startswith(top + "/"):
                return (f"the {what} {path} is under {top}, which mount isolation replaces "
                        "with the job's own; run from another directory, or without it "
                        "(--isolate pid,network)")
    return None


def _fail(book: distsvc.daemon.book.Book, job: Job, error: distsvc.errors.DistsvcError
          ) -> tuple[str, distsvc.errors.DistsvcError]:
    book.end_attempt(job, {"state": "failed", "reason": error.message, "ended": time.time()})
    distsvc.log.get(job=job.id).warning("job failed to start", error=error.message)
    return FAILED, error


def start(book: distsvc.daemon.book.Book, job: Job
          ) -> tuple[str, distsvc.errors.DistsvcError | None]:
    try:
        env = distsvc.jobs.store.load_env(book.root, job.id)
    except distsvc.errors.DistsvcError as error:
        return _fail(book, job, error)
    if job.target == "local":
        return _start_local(book, job, env)
    if job.target == "cluster":
        return _start_cluster(book, job, env)
    return _start_remote(book, job, env)


# -- here ------------------------------------------------------------------------------------

def check_here(book: distsvc.daemon.book.Book, argv: list[str], cwd: str,
               env: Mapping[str, str], limits: distsvc.jobs.limits.Limits,
               isolation_asked: list[str] | None, best_effort: bool
               ) -> tuple[str, dict[str, str], list[str], dict[str, str]]:
    """What a job on this machine would be refused for, raised as one line (the command,
    its limits, its isolation); else (the program's path, limits not enforced -> why,
    isolation kinds applied, kinds left out -> why). `job_start` asks before any record
    is made, and each start again (a queued job's turn may come much later)."""
    program = distsvc.jobs.local.check_command(argv, cwd, env)
    manager = book.manager()
    not_enforced = distsvc.jobs.local.check_limits(limits, manager.delegated_controllers(),
                                                   best_effort)
    kinds = isolation_asked if isolation_asked is not None else list(book.config.jobs.isolate)
    applied, left_out = book.local_isolation(kinds, best_effort)
    if "mount" in applied and (why := visible_with_private_tmp(
            os.path.realpath(cwd), os.path.realpath(program))):
        raise distsvc.jobs.local.JobError(why)
    return program, not_enforced, applied, left_out


def _start_local(book: distsvc.daemon.book.Book, job: Job, env: dict[str, str]
                 ) -> tuple[str, distsvc.errors.DistsvcError | None]:
    config = book.config
    try:
        program, job.not_enforced, applied, left_out = check_here(
            book, job.argv, job.cwd, env, job.limits, job.isolation_asked, job.best_effort)
    except distsvc.errors.DistsvcError as error:
        return _fail(book, job, error)
    manager = book.manager()
    job.isolation = applied
    job.placement = {"kind": "local", "unit": distsvc.jobs.local.unit_name(job.id),
                     "manager": "user" if manager.user else "system"}
    job.reason = left_out_note(left_out)
    plan = distsvc.jobs.isolation.plan(applied, manager.user)
    # Still "queued" to the watcher until the unit exists: a look before would find no unit
    # and call the job's status lost.
    try:
        distsvc.jobs.local.start(manager, book.root, job, env, plan, config.jobs.all, program)
    except distsvc.errors.DistsvcError as error:
        if not isinstance(error, distsvc.jobs.local.UnitLeftOver):
            distsvc.jobs.local.forget_unit(manager, job)  # a start that failed once loaded
        del job.placement["unit"]  # no unit of ours to let go (a squatter's is not ours)
        return _fail(book, job, error)
    job.state, job.started = "running", time.time()
    book.save(job)
    book.watch()
    distsvc.log.get(job=job.id).info("job started", unit=job.placement["unit"],
                                     argv=" ".join(job.argv)[:200])
    return STARTED, None


# -- on a host ------------------------------------------------------------------------------

def check_on_host(job: Job, caps: distsvc.jobs.remote.Caps, soft_isolation: list[str]
                  ) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """(limits not enforced -> why, isolation kinds applied, kinds left out -> why) for the
    job on a host with `caps`; HostCannot when something asked cannot be had there.

    What the user asked (`explicit_limits`, `isolation_asked`) is enforced or refused (unless
    --best-effort); the config's defaults are applied as far as the host can, the rest said
    in status."""
    asked = set(job.explicit_limits)
    if caps.mode == "supervisor":
        why = caps.why_no_systemd or "no systemd user manager reachable"
        missing = {f: why
                   for f in distsvc.jobs.limits.FIELDS if getattr(job.limits, f) is not None}
    else:
        missing = {f: f"the {c} controller is not delegated to the host's user manager "
                      "(cgroup v1, or not delegated), so it is only recorded"
                   for f, c in distsvc.jobs.limits.controllers(job.limits).items()
                   if c not in caps.controllers}
    strict = {f: w for f, w in missing.items() if f in asked}
    if strict and not job.best_effort:
        field, why = next(iter(strict.items()))
        raise distsvc.jobs.remote.HostCannot(
            f"{distsvc.jobs.limits.option(field)} cannot be enforced there: {why}; "
            "run with --best-effort to have it recorded only")
    kinds = job.isolation_asked if job.isolation_asked is not None else soft_isolation
    strict_kinds = job.isolation_asked is not None and not job.best_effort
    applied, left_out = [], {}
    for kind in kinds:
        why_not = caps.isolation.get(kind)
        if kind == "mount" and why_not is None:
            why_not = visible_with_private_tmp(job.cwd, job.argv[0] if "/" in job.argv[0]
                                               else "")
        if why_not is None:
            applied.append(kind)
        elif strict_kinds:
            raise distsvc.jobs.remote.HostCannot(
                f"{kind} isolation cannot be had there: {why_not}; switch it off "
                f"(--no-isolate {kind}) or run with --best-effort")
        else:
            left_out[kind] = why_not
    return missing, applied, left_out


def _start_remote(book: distsvc.daemon.book.Book, job: Job, env: dict[str, str]
                  ) -> tuple[str, distsvc.errors.DistsvcError | None]:
    import distsvc.actions.placement
    import distsvc.environment

    config = book.config
    assert book.pool is not None
    carried = distsvc.environment.carried(env, config.env, book.saved_environment())
    exclude: set[str] = set()
    last_refusal: distsvc.errors.DistsvcError | None = None
    while True:
        only = job.target_host if job.target == "host" else None
        try:
            choice = distsvc.actions.placement.place_now(
                config, book.state_dir, book.pool, exclude | set(job.skipped), os.getpid(),
                only)
        except distsvc.errors.CannotRun as error:
            if last_refusal is not None or _everywhere_refused(book, job):
                return _fail(book, job, last_refusal or distsvc.jobs.remote.HostCannot(
                    _no_host_can(job)))
            return _wait(book, job, error.message)
        if choice is None:
            _refused_by_known_hosts(book, job, exclude)
            if _everywhere_refused(book, job):
                return _fail(book, job, last_refusal or distsvc.jobs.remote.HostCannot(
                    _no_host_can(job)))
            return _wait(book, job, "every host is at its slot limit" if only is None else
                         f"{only} is at its slot limit")
        host = choice.host.name
        outcome = _start_on(book, job, carried, choice)
        if outcome is None:
            return STARTED, None
        kind, why = outcome
        if kind == "stopped":
            job.placement = {}
            book.end_attempt(job, {"state": "killed", "signal": 15, "ended": time.time(),
                                   "reason": "stopped before it started: it never ran"})
            return FAILED, None
        exclude.add(host)
        if kind == "refused":
            job.skipped[host] = why.message
            if job.target == "host":
                return _fail(book, job, _named(host, why))
            if isinstance(why, distsvc.jobs.remote.StartRefused):
                last_refusal = _named(host, why)


def _by_reason(whys: Mapping[str, str]) -> str:
    """`name: why` for each, the names that share a reason said together (`a, b: why`)."""
    by_reason: dict[str, list[str]] = {}
    for name, why in whys.items():
        by_reason.setdefault(why, []).append(name)
    return "; ".join(f"{', '.join(names)}: {why}" for why, names in by_reason.items())


def _no_host_can(job: Job) -> str:
    """Why no host can run the job."""
    return "no host can run it: " + _by_reason(job.skipped)


def _refused_by_known_hosts(book: distsvc.daemon.book.Book, job: Job,
                            exclude: set[str]) -> None:
    """The busy hosts whose capabilities are known already, and cannot run the job, skipped
    now: a job no host could run fails at once rather than waiting for a slot."""
    for host in book.config.hosts:
        caps = book.cached_caps(host.name)
        if host.name in exclude or host.name in job.skipped or caps is None:
            continue
        try:
            check_on_host(job, caps, list(book.config.jobs.isolate))
        except distsvc.jobs.remote.HostCannot as error:
            job.skipped[host.name] = error.message


def left_out_note(left_out: dict[str, str]) -> str | None:
    """'isolation left out: ...', the kinds that share a reason said together."""
    return "isolation left out: " + _by_reason(left_out) if left_out else None


def _back_to_queue(book: distsvc.daemon.book.Book, job: Job) -> None:
    """A start that provably did not happen: queued again, with no placement."""
    job.state, job.placement = "queued", {}
    book.save_quietly(job)


def _named(host: str, error: distsvc.errors.DistsvcError) -> distsvc.errors.DistsvcError:
    named = type(error)(f"{host}: {error.message}" if not error.message.startswith(host)
                        else error.message)
    named.exit_status = error.exit_status
    return named


def _everywhere_refused(book: distsvc.daemon.book.Book, job: Job) -> bool:
    names = [job.target_host] if job.target == "host" else [h.name for h in book.config.hosts]
    return bool(names) and all(name in job.skipped for name in names)


def _wait(book: distsvc.daemon.book.Book, job: Job, why: str
          ) -> tuple[str, distsvc.errors.DistsvcError | None]:
    if job.reason != why:
        job.reason = why
        book.save(job)
    return WAITING, None


def _start_on(book: distsvc.daemon.book.Book, job: Job, env: dict[str, str],
              choice: distsvc.actions.placement.Choice
              ) -> tuple[str, distsvc.errors.DistsvcError] | None:
    """Start on the chosen host; None when started (or maybe started), else ("unreachable"
    or "refused", why). The placement recorded by the choice is released on failure."""
    import distsvc.actions.placement

    host = choice.host.name
    log = distsvc.log.get(job=job.id, host=host)
    try:
        caps = book.host_caps(host)
        job.not_enforced, applied, left_out = check_on_host(job, caps,
                                                            list(book.config.jobs.isolate))
    except distsvc.jobs.remote.HostCannot as error:
        distsvc.actions.placement.release(book.state_dir, choice.placement)
        log.info("host cannot run the job", error=error.message)
        return "refused", error
    except (distsvc.errors.DistsvcError, TimeoutError, OSError) as error:
        why = error if isinstance(error, distsvc.errors.DistsvcError) else \
            distsvc.errors.HostUnreachable(host, f"did not answer the job probe ({error})")
        distsvc.actions.placement.mark_unreachable(book.state_dir, host, why.message,
                                                   choice.placement)  # the slot goes back
        log.warning("job not started: host unreachable", error=why.message)
        return "unreachable", why
    with book.changed:  # a stop that came meanwhile wins: nothing has run
        stopped = job.stopped
    if stopped:
        distsvc.actions.placement.release(book.state_dir, choice.placement)
        return "stopped", distsvc.jobs.local.JobError("stopped before it started")
    job.isolation = applied
    job.reason = left_out_note(left_out)
    directory = f"{caps.root}/{job.id}.{job.attempt}"
    job.placement = {"kind": "ssh", "host": host, "mode": caps.mode, "dir": directory}
    if caps.mode == "systemd":
        job.placement["unit"] = distsvc.jobs.remote.unit_name(book.origin, job.id, job.attempt)
    script = distsvc.jobs.remote.start_script(
        book.origin, job, env, caps, distsvc.jobs.store.encode(job))
    # Recorded as starting there before the script goes: a daemon that dies now finds the
    # job at its next start and looks it up on that host, never starting it elsewhere too.
    job.state = "starting"
    book.save(job)
    try:
        code, out = book.runner(host)(script, distsvc.jobs.remote.SCRIPT_TIMEOUT)
    except distsvc.errors.HostUnreachable as error:  # no session: nothing ran
        distsvc.actions.placement.mark_unreachable(book.state_dir, host, error.message,
                                                   choice.placement)
        book.forget_caps(host)
        _back_to_queue(book, job)
        log.warning("job not started: host unreachable", error=error.message)
        return "unreachable", error
    except (TimeoutError, distsvc.errors.CannotRun, OSError) as error:
        code, out = -1, str(error).encode()
    if code in (-1, distsvc.jobs.remote.EXIT_EXISTS):
        # The start may have reached the host (or did, before a daemon's end): it is never
        # tried again. The host's watcher finds it running, ended, or never made.
        job.state, job.started = "running", time.time()
        job.reason = UNCERTAIN_START
        book.hold(job, choice.placement)
        log.warning("job start uncertain", output=out.decode("utf-8", "replace")[-200:])
        return None
    try:
        answer = distsvc.jobs.remote.read_start(code, out, host)
    except distsvc.jobs.remote.HostCannot as error:
        distsvc.actions.placement.release(book.state_dir, choice.placement)
        _back_to_queue(book, job)
        if not isinstance(error, distsvc.jobs.remote.StartRefused):
            book.forget_caps(host)
        return "refused", error
    suffix = f"/distsvc/jobs-from/{book.origin}/{job.id}.{job.attempt}"
    if answer.get("dir", "").endswith(suffix) and answer["dir"].startswith("/"):
        job.placement["dir"] = answer["dir"]  # as the host spells it (only ours: the suffix)
    job.state, job.started = "running", time.time()
    book.hold(job, choice.placement)
    log.info("job started", mode=caps.mode, unit=job.placement.get("unit"),
             argv=" ".join(job.argv)[:200])
    return None


# -- on a Slurm cluster ------------------------------------------------------------------------

def slurm_dependencies(book: distsvc.daemon.book.Book, job: Job) -> tuple[list[str], str | None]:
    """The Slurm IDs of the jobs of `after` submitted to the same cluster and not over yet
    (Slurm holds the job for them: `--dependency=afterok`), and why the job cannot run, if
    one of them ended meanwhile without succeeding or is gone: the queue let it go while
    they ran, and a dependency left out of Slurm's would let it run. Read once, under the
    book's lock (an end is recorded under it)."""
    ids = []
    with book.changed:
        for other_id in job.after:
            other = book.jobs.get(other_id)
            failed = dependency_failed(other_id, other)
            if failed is not None:
                return [], failed
            if other is not None and other.state not in distsvc.jobs.record.FINAL and \
                    same_cluster(job, other):
                ids.append(other.placement["slurm_id"])
    return ids, None


def dependency_failed(other_id: str, other: Job | None) -> str | None:
    """Why a job after `other` can never run (gone, or ended without succeeding), or None."""
    if other is None:
        return f"job {other_id} is gone (removed before it succeeded?)"
    if other.state in distsvc.jobs.record.FINAL and not distsvc.jobs.record.succeeded(other):
        return f"job {other_id} {distsvc.jobs.record.describe_state(other)}"
    return None


def same_cluster(job: Job, other: Job) -> bool:
    """Whether `other` was submitted to the cluster `job` is for (so Slurm knows its ID) in
    its last attempt (a retry to come would be another Slurm job: our queue waits for that
    one)."""
    return (job.target == "cluster" and other.placement.get("kind") == "slurm"
            and other.placement.get("cluster") == job.target_host
            and other.placement.get("slurm_id", "").isdigit()
            and other.attempt > other.retries)


def _start_cluster(book: distsvc.daemon.book.Book, job: Job, env: dict[str, str]
                   ) -> tuple[str, distsvc.errors.DistsvcError | None]:
    """Submit the job to its cluster at once (Slurm's queue is its queue): one script there
    (jobs/sbatch.start_script). A refusal (Slurm's, the command's) fails the job with it; a
    cluster that cannot be reached fails it with status 255; a submission that may have
    reached the cluster is never made again (its watcher finds the job by its name)."""
    import distsvc.environment
    import distsvc.jobs.sbatch
    import distsvc.slurm

    name = job.target_host or ""
    cluster = book.config.cluster(name)
    log = distsvc.log.get(job=job.id, cluster=name)
    if cluster is None:
        return _fail(book, job, distsvc.slurm.ClusterCannot(
            f"cluster {name} is no longer in the configuration"))
    try:
        options = distsvc.slurm.options(cluster, job.limits)
    except distsvc.slurm.ClusterCannot as error:
        return _fail(book, job, error)
    depends, failed = slurm_dependencies(book, job)
    if failed is not None:
        book.end_attempt(job, {"state": "dependency-failed", "reason": failed,
                               "ended": time.time()})
        return FAILED, None
    if depends:
        options.append("--dependency=afterok:" + ":".join(depends))
    carried = distsvc.environment.carried(env, book.config.env, book.saved_environment())
    with book.changed:  # a stop that came meanwhile wins: nothing has run
        stopped = job.stopped
    if stopped:
        book.end_attempt(job, {"state": "killed", "signal": 15, "ended": time.time(),
                               "reason": "stopped before it started: it never ran"})
        return FAILED, None
    job.placement = {"kind": "slurm", "cluster": name,
                     "slurm_name": distsvc.jobs.sbatch.job_name(book.origin, job)}
    job.reason = None
    script = distsvc.jobs.sbatch.start_script(cluster, book.origin, job, carried, options)
    job.state = "starting"  # recorded before the script goes (see _start_on)
    book.save(job)
    try:
        code, out = book.runner(name)(script, distsvc.jobs.remote.SCRIPT_TIMEOUT)
    except distsvc.errors.HostUnreachable as error:  # no session: nothing was submitted
        job.placement = {}
        return _fail(book, job, distsvc.errors.CannotRun(
            f"cluster {name}: {error.message} (is its login node up? `distsvc hosts` shows "
            "what it answers)"))
    except (TimeoutError, distsvc.errors.CannotRun, OSError) as error:
        code, out = -1, str(error).encode()
    if code in (-1, distsvc.jobs.remote.EXIT_EXISTS):
        job.state, job.started = "running", time.time()
        job.reason = UNCERTAIN_START
        book.hold(job)
        log.warning("job submission uncertain", output=out.decode("utf-8", "replace")[-200:])
        return STARTED, None
    try:
        answer = distsvc.jobs.sbatch.read_start(code, out, cluster, options)
    except distsvc.errors.DistsvcError as error:
        job.placement = {}
        return _fail(book, job, error)
    if answer.get("dir", "").startswith("/") and answer["dir"].endswith(
            f"/{book.origin}/{job.id}.{job.attempt}"):
        job.placement["dir"] = answer["dir"]
    job.placement["slurm_id"] = answer["slurm_id"]  # its state: the watcher's first look
    job.state, job.started = "running", time.time()
    book.hold(job)
    log.info("job submitted to Slurm", slurm_id=answer["slurm_id"],
             argv=" ".join(job.argv)[:200])
    return STARTED, None
