"""A job's record: what was asked, where it runs, and how it ended; a versioned JSON document.

Pure: no I/O (store.py keeps the files). Also here, because they decide what a record says:
reading a job's end from systemd's unit properties (`finished`), the status `distsvc job
wait` exits with (`exit_status`), and the state in words (`describe_state`).

States: queued (waiting for a slot, its dependencies or a retry's delay: reason says which),
starting, running (maybe paused; on a host that does not answer, `host_down_since` says since
when, and the job is shown as unknown without being final), then one of FINAL: exited
(exit_code), killed (signal), timeout, oom, failed (never started: reason), dependency-failed
(never started: a job of `after` did not succeed), unknown (the end cannot be learned any
more, e.g. the unit vanished with the machine's reboot: reason). "unknown" is final because
nothing will ever tell more: `wait` returns for it and `clean` removes it.

Where a job goes is `target`: "local" (this machine), "host" (the configured host
`target_host`), "best" (the least-loaded host with a free slot when it starts) or "cluster"
(handed to the Slurm cluster `target_host` names); where it went is `placement` (kind
"local", "ssh" or "slurm", see jobs/local.py, jobs/remote.py and jobs/sbatch.py). A job with
`retries` that does not succeed is queued again; each ended attempt is kept in `attempts`
(its state, status, times and placement), its output under the attempt's number.
"""

from __future__ import annotations

import dataclasses
import signal as signals
import time
from typing import Any

import distsvc.errors
from distsvc.jobs import limits as limits_

VERSION = 2
READABLE = (1, 2)  # version 1 records lack the queue fields: their defaults apply

STATES = ("queued", "starting", "running", "exited", "killed", "timeout", "oom", "failed",
          "dependency-failed", "unknown")
FINAL = frozenset({"exited", "killed", "timeout", "oom", "failed", "dependency-failed",
                   "unknown"})
TARGETS = ("local", "host", "best", "cluster")
PAUSE_METHODS = ("freezer", "signals")
STREAMS = ("stdout", "stderr")

# A reason that starts with this makes `wait` exit 127, as a shell does for a missing command.
NOT_FOUND = "command not found"


class CorruptRecord(distsvc.errors.DistsvcError):
    """A record that cannot be read. Reported (by `list`, `status`), never a crash.

    from_json raises it with `why` only; the store adds the job's id and the file's path.
    """

    def __init__(self, why: str, id: str | None = None, path: str | None = None) -> None:
        self.why = why
        self.id = id
        self.path = path
        if id is None:
            message = f"corrupt job record: {why}"
        else:
            message = (f"job {id}: corrupt record {path}: {why} "
                       f"(`distsvc job remove {id}` deletes it)")
        super().__init__(message)


@dataclasses.dataclass
class Job:
    id: str
    name: str | None
    argv: list[str]
    cwd: str
    env_names: list[str]
    limits: limits_.Limits
    not_enforced: dict[str, str]    # limit field -> why it is not enforced (--best-effort)
    isolation: list[str]            # "pid", "mount", "network" as applied
    placement: dict[str, str]       # {"kind": "local", "unit": ..., "manager": "user"|"system"}
    state: str
    created: float
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    cpu_ns: int | None = None
    memory_peak: int | None = None
    memory_current: int | None = None
    paused: bool = False
    pause_method: str | None = None
    output_cut: dict[str, int] = dataclasses.field(default_factory=dict)
    # Where it is to go, and the queue (version 2).
    target: str = "local"
    target_host: str | None = None
    group: str | None = None
    after: list[str] = dataclasses.field(default_factory=list)
    retries: int = 0                  # attempts after the first, at most
    retry_delay: float = 0.0          # seconds between an attempt's end and the next start
    attempt: int = 1                  # this attempt's number
    attempts: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # ended ones
    not_before: float | None = None   # a queued retry starts no earlier
    best_effort: bool = False
    explicit_limits: list[str] = dataclasses.field(default_factory=list)  # asked, not defaults
    isolation_asked: list[str] | None = None  # None: the config's jobs.isolate (best effort
    #                                           on hosts), else exactly these kinds
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # host -> why not there
    host_down_since: float | None = None
    stopped: bool = False             # the user stopped it: never retried


def to_json(job: Job) -> dict[str, Any]:
    data = dataclasses.asdict(job)
    data["limits"] = limits_.to_json(job.limits)
    return {"version": VERSION, **data}


# Field -> (accepted types, may be None). Lists and dicts are checked item by item below.
_SCALARS: dict[str, tuple[tuple[type, ...], bool]] = {
    "id": ((str,), False), "name": ((str,), True), "cwd": ((str,), False),
    "state": ((str,), False), "created": ((int, float), False),
    "started": ((int, float), True), "ended": ((int, float), True),
    "exit_code": ((int,), True), "signal": ((int,), True), "reason": ((str,), True),
    "cpu_ns": ((int,), True), "memory_peak": ((int,), True), "memory_current": ((int,), True),
    "paused": ((bool,), False), "pause_method": ((str,), True),
    "target": ((str,), False), "target_host": ((str,), True), "group": ((str,), True),
    "retries": ((int,), False), "retry_delay": ((int, float), False),
    "attempt": ((int,), False), "not_before": ((int, float), True),
    "best_effort": ((bool,), False), "host_down_since": ((int, float), True),
    "stopped": ((bool,), False),
}
_STRING_LISTS = ("argv", "env_names", "isolation", "after", "explicit_limits")
_STRING_MAPS = ("not_enforced", "placement", "skipped")
_DEFAULTS = {f.name for f in dataclasses.fields(Job)
             if f.default is not dataclasses.MISSING
             or f.default_factory is not dataclasses.MISSING}


def from_json(data: Any) -> Job:
    """A record read back; CorruptRecord(why) on anything malformed, so no half-valid record
    reaches the daemon (it would fail later, far from the cause)."""
    if not isinstance(data, dict):
        raise CorruptRecord("not a JSON object")
    version = data.get("version")
    if version not in READABLE or isinstance(version, bool):
        if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
            raise CorruptRecord(f"version {version} is newer than this distsvc reads "
                                f"({VERSION}); upgrade distsvc")
        raise CorruptRecord(f"version {version!r} is not one of {READABLE}")
    fields = {f.name for f in dataclasses.fields(Job)}
    unknown = sorted(set(data) - fields - {"version"})
    if unknown:
        raise CorruptRecord(f"unknown field {unknown[0]!r}")
    missing = sorted(fields - _DEFAULTS - set(data))
    if missing:
        raise CorruptRecord(f"missing field {missing[0]!r}")
    values = {k: v for k, v in data.items() if k != "version"}
    for key, (types, optional) in _SCALARS.items():
        if key not in values or (optional and values[key] is None):
            continue
        value = values[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise CorruptRecord(f"{key}: wrong type {type(value).__name__}")
    for key in _STRING_LISTS:
        if key in values and (not isinstance(values[key], list)
                              or not all(isinstance(v, str) for v in values[key])):
            raise CorruptRecord(f"{key}: not a list of strings")
    for key in _STRING_MAPS:
        if key in values and not _map_of(values[key], str):
            raise CorruptRecord(f"{key}: not an object of strings")
    asked = values.get("isolation_asked")
    if asked is not None and (not isinstance(asked, list)
                              or not all(isinstance(v, str) for v in asked)):
        raise CorruptRecord("isolation_asked: not a list of strings")
    attempts = values.get("attempts", [])
    if not isinstance(attempts, list) or not all(isinstance(a, dict) for a in attempts):
        raise CorruptRecord("attempts: not a list of objects")
    cut = values.get("output_cut", {})
    if not _map_of(cut, int) or not set(cut) <= set(STREAMS):
        raise CorruptRecord("output_cut: not an object of stdout/stderr byte counts")
    for key in ("created", "started", "ended", "not_before", "host_down_since",
                "retry_delay"):      # JSON may have written 5.0 as 5
        if values.get(key) is not None:
            values[key] = float(values[key])
    try:
        values["limits"] = limits_.from_json(values["limits"])
    except ValueError as error:
        raise CorruptRecord(str(error)) from None
    job = Job(**values)
    _check_consistent(job)
    return job


def _map_of(value: Any, kind: type) -> bool:
    return isinstance(value, dict) and all(
        isinstance(v, kind) and not isinstance(v, bool) for v in value.values())


def _check_consistent(job: Job) -> None:
    if job.state not in STATES:
        raise CorruptRecord(f"state: unknown state {job.state!r}")
    if job.pause_method is not None and job.pause_method not in PAUSE_METHODS:
        raise CorruptRecord(f"pause_method: unknown method {job.pause_method!r}")
    if job.state == "exited" and job.exit_code is None:
        raise CorruptRecord("state exited without exit_code")
    if job.state == "killed" and job.signal is None:
        raise CorruptRecord("state killed without signal")
    if not job.argv:
        raise CorruptRecord("argv: empty")
    if job.target not in TARGETS:
        raise CorruptRecord(f"target: unknown target {job.target!r}")
    if job.target in ("host", "cluster") and not job.target_host:
        raise CorruptRecord(f"target {job.target} without target_host")


# systemd's own exit codes for a unit process it could not set up (systemd.exec(5), "PROCESS
# EXIT CODES"): the command never ran.
SYSTEMD_EXIT_CODES = {
    200: "cannot change to the working directory",
    201: "cannot set the scheduling priority",
    202: "cannot set up file descriptors",
    203: "cannot execute the command (not found or not executable)",
    204: "out of memory while setting up",
    205: "cannot set resource limits",
    206: "cannot adjust the OOM score",
    207: "cannot set the signal mask",
    208: "cannot set up standard input",
    209: "cannot set up standard output",
    210: "cannot change root",
    211: "cannot set the I/O priority",
    212: "cannot set the timer slack",
    213: "cannot set securebits",
    214: "cannot set the scheduling policy",
    215: "cannot set the CPU affinity",
    216: "cannot set the group",
    217: "cannot set the user",
    218: "cannot drop capabilities",
    219: "cannot set up the cgroup",
    220: "cannot create a session",
    221: "execution was not confirmed",
    222: "cannot set up standard error",
    224: "PAM failed",
    225: "cannot set up the network namespace",
    226: "cannot set up the namespaces",
    227: "cannot set no_new_privileges",
    228: "cannot apply the seccomp filter",
    229: "cannot set the SELinux context",
    230: "cannot set the execution domain (personality)",
    231: "cannot set the AppArmor profile",
    232: "cannot restrict address families",
    233: "cannot create the runtime directory",
    235: "cannot change ownership",
    236: "cannot set the SMACK label",
    237: "cannot set up the kernel keyring",
    238: "cannot create the state directory",
    239: "cannot create the cache directory",
    240: "cannot create the logs directory",
    241: "cannot create the configuration directory",
    242: "cannot set the NUMA policy",
    243: "cannot set up credentials",
}

CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3   # ExecMainCode (siginfo's si_code)
_ENDED = ("active", "inactive", "failed")       # states in which systemd's figures are final


def finished(active_state: str, result: str, exec_main_code: int, exec_main_status: int, *,
             command_started: bool = False
             ) -> tuple[str, int | None, int | None, str | None] | None:
    """How a job's unit ended, from its properties: (state, exit_code, signal, reason), or
    None while it runs (or is being stopped, when its figures are not final yet).

    The unit is kept after exit (RemainAfterExit), so "active" with a main process that has
    exited means done. Result wins over the exit: "oom-kill" and "timeout" are what the user
    must hear even though the process was also killed by a signal. Exit codes 200-243 with
    result "exit-code" are systemd's own failures to set the process up (the command never
    ran), unless `command_started` says the command is known to have started (then they are
    its own).
    """
    if active_state not in _ENDED:
        return None
    if result == "oom-kill":
        return ("oom", None, None, None)
    if result == "timeout":
        return ("timeout", None, None, None)
    if exec_main_code in (CLD_KILLED, CLD_DUMPED):
        return ("killed", None, exec_main_status, None)
    if exec_main_code == CLD_EXITED:
        why = SYSTEMD_EXIT_CODES.get(exec_main_status)
        if why is not None and result == "exit-code" and not command_started:
            if exec_main_status == 203:
                why = f"{NOT_FOUND} or not executable ({why})"
            return ("failed", None, None, f"{why} (systemd exit code {exec_main_status})")
        return ("exited", exec_main_status, None, None)
    if active_state == "active":
        return None      # no main process has exited: still running
    if result == "success":
        return ("unknown", None, None, "the unit ended without an exit status")
    return ("failed", None, None, f"systemd could not start the unit (result: {result})")


EXIT_TIMEOUT = 124      # as timeout(1)
EXIT_OOM = 137          # 128 + SIGKILL, what a shell shows for an OOM-killed command
EXIT_NOT_FOUND = 127    # as a shell for a missing command
EXIT_NOT_STARTED = 126  # as a shell for a command that cannot be executed
EXIT_UNKNOWN = 255      # distsvc's "could not be run / cannot tell"
EXIT_DEPENDENCY = 125   # never run: a job it was to run after did not succeed


def exit_status(job: Job) -> int:
    """What `distsvc job wait` exits with, as a shell would for the command run here.

    exited: its code; killed: 128+signal; timeout: 124 (as timeout(1)); oom: 137 (the
    SIGKILL the kernel sent); failed: 127 when the command was not found (the reason starts
    with NOT_FOUND), else 126 (could not be run); dependency-failed: 125; unknown, or a job
    not finished: 255.
    """
    if job.state == "exited" and job.exit_code is not None:
        return job.exit_code
    if job.state == "killed" and job.signal is not None:
        return 128 + job.signal
    if job.state == "timeout":
        return EXIT_TIMEOUT
    if job.state == "oom":
        return EXIT_OOM
    if job.state == "failed":
        reason = job.reason or ""
        return EXIT_NOT_FOUND if reason.startswith(NOT_FOUND) else EXIT_NOT_STARTED
    if job.state == "dependency-failed":
        return EXIT_DEPENDENCY
    return EXIT_UNKNOWN


def succeeded(job: Job) -> bool:
    return job.state == "exited" and job.exit_code == 0


def attempt_summary(job: Job) -> dict[str, Any]:
    """What `attempts` keeps of an ended attempt."""
    return {"attempt": job.attempt, "state": job.state, "exit_code": job.exit_code,
            "signal": job.signal, "reason": job.reason, "started": job.started,
            "ended": job.ended, "placement": dict(job.placement),
            "describe": describe_state(job)}


def signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"


def where(job: Job) -> str:
    """The host or cluster a job's placement is on: "" for one on this machine (or none)."""
    kind = job.placement.get("kind")
    if kind == "ssh":
        return job.placement.get("host", "")
    if kind == "slurm":
        return job.placement.get("cluster", "")
    return ""


def slurm_state(place: dict[str, str]) -> str:
    """A submitted, unfinished Slurm job in words: Slurm's state and reason, its node."""
    state = place.get("slurm_state") or "PENDING"
    said = state.lower()
    if place.get("slurm_reason"):
        said += f" ({place['slurm_reason']})"
    if state == "RUNNING" and place.get("node"):
        said += f" on {place['node']}"
    return said


def describe_state(job: Job) -> str:
    """The state in words, for `list` and `status`."""
    if job.state == "exited":
        return f"exited {job.exit_code}"
    if job.state == "killed":
        return f"killed by {signal_name(job.signal or 0)}"
    if job.state == "timeout":
        if job.limits.timeout is None:
            return "timed out"
        return f"timed out after {limits_.format_duration(job.limits.timeout)}"
    if job.state == "oom":
        if job.limits.memory is None:
            return "out of memory"
        return f"out of memory (limit {limits_.format_size(job.limits.memory)})"
    if job.state == "failed":
        return f"failed to start: {job.reason or 'no reason given'}"
    if job.state == "unknown":
        return f"unknown: {job.reason or 'no reason given'}"
    if job.state == "dependency-failed":
        return f"dependency failed: {job.reason or 'a job it was to run after failed'}"
    if job.host_down_since is not None and job.state not in FINAL:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.host_down_since))
        where = (f"cluster {job.placement.get('cluster', '?')}"
                 if job.placement.get("kind") == "slurm" else
                 f"host {job.placement.get('host', '?')}")
        why = job.placement.get("down_reason")
        return f"unknown ({where} down since {since}" + (f": {why})" if why else ")")
    if job.state == "running" and job.placement.get("kind") == "slurm":
        return slurm_state(job.placement)
    if job.state == "running" and job.paused:
        return f"paused ({job.pause_method or 'unknown method'})"
    if job.state == "queued" and job.reason:
        return f"queued: {job.reason}"
    return job.state
