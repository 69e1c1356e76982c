"""Jobs on this machine: each one a transient service unit of the user's systemd manager.

systemd, not the daemon, is the job's parent: the unit's stdout and stderr are appended to
the job's output files, so a job outlives the daemon and its clients. RemainAfterExit keeps
the unit (and so its exit status) after the command ends, until the daemon has written the
job's final record; `collect` then lets the unit go. A job that ended while no daemon ran is
found in that state by `refresh` when one starts again.

This is one kind of placement ("local"); a job on an SSH host is another, with the same
record and the same verbs (start, refresh, stop, pause, resume, collect).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Mapping
from pathlib import Path

import distsvc.adapters.systemd.units as units
import distsvc.errors
import distsvc.jobs.isolation
import distsvc.jobs.limits
import distsvc.jobs.record
import distsvc.jobs.store
import distsvc.protocol

UNIT_PREFIX = "distsvc-job-"
SLICE = "distsvc.slice"
POLL = 0.05  # while waiting for a signalled job to end
STOP_TIMEOUT_USEC = 10_000_000  # the manager's own stop (collect, remove): SIGTERM, then SIGKILL


class JobError(distsvc.errors.DistsvcError):
    """A job request that cannot be done as asked; the message says what to do instead."""

    exit_status = distsvc.errors.EXIT_JOB


def unit_name(job_id: str) -> str:
    return f"{UNIT_PREFIX}{job_id}.service"


class UnitLeftOver(JobError):
    """A unit of the job's name exists already: it is not ours to remove."""


def check_command(argv: list[str], cwd: str, env: Mapping[str, str]) -> str:
    """Refuse, before anything starts, a command that cannot run: one line, and the shell's
    statuses (127 not found, 126 not executable), as `sh -c CMD` would exit. The program's
    absolute path, found in the job's own PATH (systemd would search its own)."""
    if not os.path.isdir(cwd):
        raise JobError(f"{cwd}: no such directory (choose another with --workdir)")
    name = argv[0]
    if "/" in name:
        path = name if os.path.isabs(name) else os.path.join(cwd, name)
        if not os.path.exists(path):
            error = JobError(f"{name}: no such file")
            error.exit_status = 127
            raise error
    else:
        found = shutil.which(name, path=env.get("PATH", os.defpath))
        if found is None:
            error = JobError(f"{name}: command not found (PATH={env.get('PATH', os.defpath)})")
            error.exit_status = 127
            raise error
        path = found
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        error = JobError(f"{name}: not executable")
        error.exit_status = 126
        raise error
    return os.path.abspath(path)


def unenforceable(limits: distsvc.jobs.limits.Limits,
                  delegated: frozenset[str]) -> dict[str, str]:
    """Each asked limit whose cgroup controller this manager cannot enforce, with why."""
    return {field: f"the {controller} controller is not delegated to the "
                   "user manager (cgroup v1, or not delegated), so it is only recorded"
            for field, controller in distsvc.jobs.limits.controllers(limits).items()
            if controller not in delegated}


def check_limits(limits: distsvc.jobs.limits.Limits, delegated: frozenset[str],
                 best_effort: bool) -> dict[str, str]:
    """The limits that cannot be enforced here, with why: refused (one line) unless
    `best_effort`, when they are applied as far as they go and reported."""
    missing = unenforceable(limits, delegated)
    if missing and not best_effort:
        field, why = next(iter(missing.items()))
        raise JobError(f"{distsvc.jobs.limits.option(field)} cannot be enforced here: {why}; "
                       "run with --best-effort to have it recorded only")
    return missing


def properties(job: distsvc.jobs.record.Job, env: Mapping[str, str], root: Path,
               plan: distsvc.jobs.isolation.Plan) -> dict[str, object]:
    """The unit's properties: where it runs, its output files, its limits and isolation."""
    props: dict[str, object] = {
        "WorkingDirectory": job.cwd,
        "Environment": [f"{k}={v}" for k, v in env.items()],
        "StandardOutputFileToAppend": str(distsvc.jobs.store.output_path(root, job.id, "stdout")),
        "StandardErrorFileToAppend": str(distsvc.jobs.store.output_path(root, job.id, "stderr")),
        "RemainAfterExit": True,
        "Slice": SLICE,
        "KillMode": "control-group",
        "SendSIGKILL": True,
        "TimeoutStopUSec": STOP_TIMEOUT_USEC,
    }
    props.update(distsvc.jobs.limits.properties(job.limits, job.cwd))
    props.update(plan.properties)
    return props


def start(manager: units.Manager, root: Path, job: distsvc.jobs.record.Job,
          env: Mapping[str, str], plan: distsvc.jobs.isolation.Plan,
          all_jobs: distsvc.jobs.limits.Limits | None = None,
          program: str | None = None) -> None:
    """Start the job's unit in SLICE; `all_jobs` are the limits of the slice, set when it is
    made (by the first job while none runs: a slice's limits are not changed under its jobs)."""
    if all_jobs is not None and not distsvc.jobs.limits.is_empty(all_jobs):
        manager.start_slice(SLICE, distsvc.jobs.limits.properties(all_jobs, "/"))
    command = [program or job.argv[0], *job.argv[1:]]  # argv[0] as found by check_command
    argv = [*plan.argv_prefix, *command]
    description = f"distsvc job {job.id}: {distsvc.protocol.describe_command(job.argv)}"
    try:
        manager.start_service(unit_name(job.id), argv, properties(job, env, root, plan),
                              description)
    except units.UnitExists:
        raise UnitLeftOver(
            f"a unit {unit_name(job.id)} exists already (left by a crashed manager?); "
            f"remove it (systemctl {'--user ' if manager.user else ''}stop "
            f"{unit_name(job.id)}; systemctl {'--user ' if manager.user else ''}reset-failed "
            f"{unit_name(job.id)}) and start the job again") from None


def refresh(manager: units.Manager, job: distsvc.jobs.record.Job) -> bool:
    """Bring the record up to date with the unit; True when the job has just ended."""
    if job.state in distsvc.jobs.record.FINAL:
        return False
    state = manager.state(unit_name(job.id))
    if state is None:
        job.state = "unknown"
        job.reason = (f"its unit {unit_name(job.id)} is gone (was the user manager restarted?); "
                      "its exit status is lost")
        job.ended = job.ended or time.time()
        return True
    job.started = state.started_at or job.started
    if state.cpu_ns is not None:
        job.cpu_ns = state.cpu_ns
    if state.memory_peak is not None:
        job.memory_peak = state.memory_peak
    if state.memory_current is not None:
        job.memory_current = state.memory_current
    ended = distsvc.jobs.record.finished(state.active_state, state.result,
                                         state.exec_main_code, state.exec_main_status)
    if ended is None:
        if state.active_state in ("active", "reloading", "deactivating") and state.main_pid:
            job.state = "running"
        return False
    job.state, job.exit_code, job.signal, job.reason = ended
    job.ended = state.exited_at or time.time()
    job.paused = False
    return True


def collect(manager: units.Manager, job: distsvc.jobs.record.Job) -> None:
    """Let the unit of an ended job (whose final record is written) go: what it left
    behind in its cgroup (a daemonized grandchild) is ended with it."""
    name = unit_name(job.id)
    manager.stop(name)
    manager.reset_failed(name)


def forget_unit(manager: units.Manager, job: distsvc.jobs.record.Job) -> None:
    """collect() for a job being removed or that failed to start: no error if it is gone."""
    try:
        collect(manager, job)
    except units.UnitError:
        pass


def _signal_all(manager: units.Manager, job: distsvc.jobs.record.Job, signum: int) -> None:
    for pid in manager.processes(unit_name(job.id)):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def pause(manager: units.Manager, job: distsvc.jobs.record.Job) -> str:
    """Stop the whole tree: the unit's freezer where the manager has one, else SIGSTOP to
    every process of its cgroup (twice over, for what forked meanwhile). The method used."""
    try:
        manager.freeze(unit_name(job.id))
        method = "freezer"
    except units.Unsupported:
        for _ in range(2):
            _signal_all(manager, job, signal.SIGSTOP)
        method = "signals"
    job.paused, job.pause_method = True, method
    return method


def resume(manager: units.Manager, job: distsvc.jobs.record.Job) -> str:
    method = job.pause_method or "signals"
    if method == "freezer":
        manager.thaw(unit_name(job.id))
    else:
        _signal_all(manager, job, signal.SIGCONT)
    job.paused, job.pause_method = False, None
    return method


def stop(manager: units.Manager, job: distsvc.jobs.record.Job, signum: int,
         grace: float) -> None:
    """`signum` to every process of the unit; what is left after `grace` gets SIGKILL."""
    name = unit_name(job.id)
    if job.paused:
        resume(manager, job)  # a stopped process would hold its SIGTERM until SIGCONT
    manager.kill(name, signum)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not manager.processes(name):
            return
        time.sleep(POLL)
    if manager.processes(name):
        manager.kill(name, signal.SIGKILL)
