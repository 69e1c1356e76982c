"""Slurm: the options distsvc hands a cluster, and reading what Slurm answers. Pure: no I/O.

A cluster (`config.Cluster`) is reached either on this machine, where Slurm's client commands
are, or on its login node over SSH; either way distsvc runs POSIX shell there, so everything
here is text: options for `srun` and `sbatch`, and parsers for `sinfo`, `squeue`, `scontrol`
and `sacct` output. Who runs it is the caller's business (`actions/` for `distsvc-run --on`,
`daemon/` for jobs).

Limits map to Slurm's own requests (`LIMIT_OPTIONS`): `--memory` to `--mem` (MiB, rounded up),
`--cpu 250%` to `--cpus-per-task=3` (whole CPUs, rounded up), `--timeout` to `--time`
(whole minutes, rounded up: Slurm's granularity). What has no Slurm counterpart is refused
with the reason (`ClusterCannot`): `--tasks` (Slurm 22.05's cgroup plugin bounds no process
count), `--io-*` (Slurm has no I/O limits).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
from collections.abc import Mapping

import distsvc.config
import distsvc.errors
import distsvc.remote
from distsvc.jobs import limits as job_limits

RUN_PREFIX = "distsvc-run-"
"""`srun --job-name` of a `distsvc-run --on` command: RUN_PREFIX + its token (to cancel it)."""
JOB_PREFIX = "distsvc-"
"""`sbatch --job-name` of a distsvc job: JOB_PREFIX + ORIGIN-ID.ATTEMPT (jobs/sbatch)."""
NOT_SHARED_STATUS = distsvc.errors.EXIT_CANNOT_RUN
"""The exit status when the working directory is not on the cluster's node."""


class ClusterCannot(distsvc.errors.DistsvcError):
    """The cluster cannot give what was asked (a limit Slurm has no counterpart for, a
    directory it does not share) or refused it (partition, account, QOS, a limit beyond the
    partition's): why, in one line, with what to do."""

    exit_status = distsvc.errors.EXIT_JOB


# Limit field -> why Slurm cannot give it (the others map, see slurm_limits).
UNMAPPED = {
    "tasks": "Slurm bounds no process count (its cgroup plugin has no pids limit)",
    "io_weight": "Slurm has no I/O limits",
    "io_read": "Slurm has no I/O limits",
    "io_write": "Slurm has no I/O limits",
}


def refuse_unmapped(cluster: distsvc.config.Cluster, limits: job_limits.Limits) -> None:
    """Raise ClusterCannot for the first limit asked that Slurm cannot give."""
    for field, why in UNMAPPED.items():
        if getattr(limits, field) is not None:
            raise ClusterCannot(f"{job_limits.option(field)}: cluster {cluster.name} cannot "
                                f"enforce it: {why}; leave it out")


def limit_options(limits: job_limits.Limits) -> list[str]:
    """Slurm's options for the mapped limits (refuse_unmapped first)."""
    options = []
    if limits.memory is not None:
        options.append(f"--mem={max(1, math.ceil(limits.memory / (1 << 20)))}M")
    if limits.cpu is not None:
        options.append(f"--cpus-per-task={max(1, math.ceil(limits.cpu / 100))}")
    if limits.timeout is not None:
        options.append(f"--time={format_time(limits.timeout)}")
    return options


def format_time(seconds: float) -> str:
    """Slurm's `--time` for `seconds`: whole minutes, rounded up (at least one)."""
    minutes = max(1, math.ceil(seconds / 60))
    days, minutes = divmod(minutes, 1440)
    hours, minutes = divmod(minutes, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:00" if days else f"{hours:02d}:{minutes:02d}:00"


def options(cluster: distsvc.config.Cluster, limits: job_limits.Limits) -> list[str]:
    """Where the work goes (partition, account, QOS) and its limits: the ones asked merged
    over the cluster's defaults. Raises ClusterCannot for what Slurm cannot give."""
    merged = job_limits.merge(cluster.defaults, limits)
    refuse_unmapped(cluster, merged)
    placed = [f"--{key}={value}" for key in ("partition", "account", "qos")
              if (value := getattr(cluster, key)) is not None]
    return placed + limit_options(merged)


# --- answers ---------------------------------------------------------------------------------

_FAILURE = re.compile(r"^(?:allocation failure|s(?:run|batch|alloc): (?:error|fatal)): "
                      r"(?P<why>.+)$", re.MULTILINE)
# Slurm's reasons for refusing what was asked: the request's fault (4). Anything else (a
# configuration it cannot find, munge, a controller that does not answer) is Slurm failing to
# be asked at all (255).
_REFUSED = re.compile(r"partition|account|association|\bqos\b|time limit|memory|processors|"
                      r"node config|\bcpus?\b|^invalid |violates|exceeds|not available",
                      re.IGNORECASE)
_NOT_ASKED = re.compile(r"config(?:uration)? source|fetch_config|munge|auth|credential|"
                        r"slurm\.conf", re.IGNORECASE)
# What srun and sbatch say when the controller does not answer.
_UNREACHABLE = re.compile(r"unable to contact slurm controller|socket timed out|"
                          r"connection refused|zero bytes were transmitted|"
                          r"communication connection failure", re.IGNORECASE)


def refusal(cluster: distsvc.config.Cluster, stderr: str, opts: list[str]
            ) -> distsvc.errors.DistsvcError:
    """What srun's or sbatch's failure (its stderr) means, in one line with Slurm's reason:
    ClusterCannot (4) with what to do for a reason Slurm refuses a request for (partition,
    account, QOS, a limit beyond the partition's, "Invalid ..."); CannotRun (255) for anything
    else (`srun: fatal:`, no configuration, munge): nothing was asked of Slurm. The one
    classifier of srun (`check_answer`) and sbatch (jobs/sbatch.py)."""
    reasons = [m["why"].strip() for m in _FAILURE.finditer(stderr)]
    fatal = re.search(r"^s(?:run|batch|alloc): fatal: ", stderr, re.MULTILINE) is not None
    # The last one is the summary ("Batch job submission failed: ..."): keep it, without it.
    why = reasons[-1] if reasons else (stderr.strip().splitlines() or ["no reason given"])[-1]
    why = re.sub(r"^(?:Batch job submission failed|Unable to allocate resources): ", "", why)
    if _UNREACHABLE.search(stderr):
        return distsvc.errors.CannotRun(
            f"cluster {cluster.name}: Slurm's controller does not answer ({why}); see "
            "`scontrol ping` there")
    if fatal or _NOT_ASKED.search(stderr) or not _REFUSED.search(why):
        return distsvc.errors.CannotRun(
            f"cluster {cluster.name}: Slurm could not be asked ({why}); see `scontrol ping` "
            "and Slurm's configuration there")
    low = why.lower()
    default = "the default"
    # "Invalid account or account/partition combination": the account's, first.
    if "account" in low or "association" in low:
        hint = (f"check `account` of cluster {cluster.name} ({cluster.account or default})"
                " against `sacctmgr show assoc user=$USER` there")
    elif "partition" in low:
        hint = (f"check `partition` of cluster {cluster.name} ({cluster.partition or default})"
                " against `sinfo -s` there")
    elif "qos" in low:
        hint = f"check `qos` of cluster {cluster.name} ({cluster.qos or default})"
    elif any(word in low for word in ("time limit", "memory", "processors", "node config",
                                      "cpu")):
        shown = " ".join(o for o in opts if o.startswith(("--mem", "--cpus", "--time")))
        hint = (f"ask for less ({shown or 'the defaults'}); `sinfo -o '%P %l %m %c'` there "
                "shows each partition's most")
    else:
        hint = f"see `sinfo` and `squeue` on cluster {cluster.name}"
    return ClusterCannot(f"cluster {cluster.name} refused it: {why}; {hint}")


@dataclasses.dataclass(frozen=True)
class Summary:
    """What `distsvc hosts` shows of a cluster: its nodes by state, the user's jobs."""

    nodes: dict[str, int]   # "idle", "allocated", "mixed", "down", ... -> count
    cpus: tuple[int, int, int, int]  # allocated, idle, other, total (sinfo's %C)
    pending: int
    running: int


def summary_script(user_only: bool = True) -> str:
    """Shell that prints what `parse_summary` reads (one line per node state, then jobs)."""
    who = "-u \"$(id -un)\" " if user_only else ""
    return ("sinfo -h -N -o 'node %N %T' | sort -u && sinfo -h -o 'cpus %C' | head -n 1 && "
            f"squeue -h {who}-o 'job %T'")


def parse_summary(out: str) -> Summary:
    nodes: dict[str, int] = {}
    cpus = (0, 0, 0, 0)
    pending = running = 0
    for line in out.splitlines():
        word, _, rest = line.partition(" ")
        if word == "node":
            state = rest.split()[-1].rstrip("*~#!%$@^-").lower() if rest.split() else "unknown"
            state = {"alloc": "allocated", "drng": "draining", "drain": "drained"}.get(
                state, state)
            nodes[state] = nodes.get(state, 0) + 1
        elif word == "cpus":
            parts = rest.strip().split("/")
            if len(parts) == 4 and all(p.isdigit() for p in parts):
                cpus = (int(parts[0]), int(parts[1]), int(parts[2]), int(parts[3]))
        elif word == "job":
            if rest.strip() == "PENDING":
                pending += 1
            elif rest.strip() in ("RUNNING", "COMPLETING", "CONFIGURING"):
                running += 1
    return Summary(nodes=nodes, cpus=cpus, pending=pending, running=running)


def exit_code(text: str) -> tuple[int | None, int | None]:
    """sacct's and scontrol's `ExitCode` ("3:0", "0:15"): (exit code, signal)."""
    code, _, sig = text.partition(":")
    try:
        number, signal = int(code), int(sig or 0)
    except ValueError:
        return None, None
    return (None, signal) if signal else (number, None)


def parse_fields(text: str) -> dict[str, str]:
    """`scontrol show job -o ID`'s one line of `Key=Value` pairs (values may hold spaces
    only in Command= and the like, which come last; what we read comes before)."""
    fields: dict[str, str] = {}
    for item in re.finditer(r"(?:^|\s)([A-Za-z][A-Za-z:/]*)=(\S*)", text):
        fields.setdefault(item[1], item[2])
    return fields


def parse_duration(text: str) -> float | None:
    """Slurm's `[D-]HH:MM:SS[.mmm]` or `MM:SS.mmm` as seconds; None if it is not one."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)", text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = match.groups()
    return (int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60
            + float(seconds))


def parse_size(text: str) -> int | None:
    """sacct's MaxRSS ("1234K", "12M", "0"): bytes; None if empty or unreadable."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTP]?)", text.strip())
    if not match:
        return None
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
    return int(float(match[1]) * scale[match[2]])


# A Slurm state -> (distsvc state, reason template) for an ended job. Exit code and signal
# come from ExitCode.
ENDED = {
    "COMPLETED": "exited",
    "FAILED": "exited",
    "CANCELLED": "killed",
    "TIMEOUT": "timeout",
    "OUT_OF_MEMORY": "oom",
    "NODE_FAIL": "failed",
    "BOOT_FAIL": "failed",
    "DEADLINE": "timeout",
    "PREEMPTED": "killed",
    "REVOKED": "failed",
    "SPECIAL_EXIT": "exited",
}
ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED",
          "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESV_DEL_HOLD")


def ended(slurm_state: str, code_text: str, reason: str | None = None
          ) -> tuple[str, int | None, int | None, str | None] | None:
    """A job's end as a record has it, (state, exit code, signal, reason), from Slurm's state
    ("CANCELLED by 1001" reads as CANCELLED) and ExitCode; None while it is not over."""
    state = slurm_state.split()[0].rstrip("+") if slurm_state.split() else ""
    if state in ACTIVE or state not in ENDED:
        return None
    code, signal = exit_code(code_text)
    mapped = ENDED[state]
    note = f"Slurm: {state}" + (f" ({reason})" if reason and reason != "None" else "")
    if launch_failed(state, code_text, reason):
        return ("failed", None, None, f"Slurm could not launch it ({reason or state}, "
                f"ExitCode {code_text})")
    if mapped == "exited":
        if signal is not None:
            return ("killed", None, signal, note)
        return ("exited", code if code is not None else 1, None,
                None if state == "COMPLETED" else note)
    if mapped == "killed":
        return ("killed", None, signal or 15, note)
    return (mapped, None, None, note)


def launch_failed(slurm_state: str, code_text: str, reason: str | None = None) -> bool:
    """Whether Slurm failed to launch the job rather than the job failing: FAILED with the
    reason JobLaunchFailure (say `--output` in a directory the node lacks), or with a
    "signal" no process sends its job (beyond 1..31: Slurm 22.05 records 0:53 for a launch
    failure once only accounting is left to say it). A job Slurm killed beyond its memory
    (OverMemoryKill, also JobLaunchFailure with 0:9) is told apart by the caller, who sees
    slurmstepd's line in the job's stderr."""
    state = slurm_state.split()[0].rstrip("+") if slurm_state.split() else ""
    if state != "FAILED":
        return False
    signal = exit_code(code_text)[1]
    return reason == "JobLaunchFailure" or (signal is not None and not 1 <= signal <= 31)


def reason_text(fields: Mapping[str, str]) -> str | None:
    """`Reason=` as people read it ("Priority", "Resources", "Dependency"); None for None."""
    reason = fields.get("Reason", "")
    return None if reason in ("", "None", "(null)") else reason


# --- distsvc-run --on: srun's command line and the check before it -----------------------------

# What runs on the node before the command, with the directory as $1: the command must never
# run elsewhere, and `srun --chdir` to a directory the node lacks runs it in /tmp (slurmstepd
# only logs it). Said in the user's terms, as remote.lookup_check says it for hosts: their
# directory and command, the node's name.
GUARD = (
    'cd -- "$1" 2>/dev/null || { printf \'distsvc: %s: no such directory on node %s '
    '(choose one the nodes have with --workdir)\\n\' "$1" "${SLURMD_NODENAME:-$(uname -n)}" '
    '>&2; exit 255; }; shift; '
    'command -v -- "$1" >/dev/null 2>&1 || { printf \'distsvc: %s: command not found on '
    'node %s\\n\' "$1" "${SLURMD_NODENAME:-$(uname -n)}" >&2; exit 127; }; '
    'exec "$@"')
GUARD_NAME = "distsvc-guard"
"""The guard's $0: what `ps` shows on the node until the command replaces it."""
NO_DIRECTORY_STATUS = 255


def run_name(token: str) -> str:
    """`srun --job-name` of a `distsvc-run --on` command (`scancel --name` finds it)."""
    return RUN_PREFIX + token


def srun_argv(opts: list[str], token: str, workdir: str, argv: list[str] | tuple[str, ...],
              terminal: bool, stdin: bool = True) -> list[str]:
    """srun running argv in `workdir` on a node, under the guard: one Ctrl-C ends the job
    (`--quit-on-interrupt`: srun 22.05 mis-parses `-q`), a terminal with `terminal`, stdin
    not read without `stdin` (the command reads end-of-file)."""
    return ["srun", f"--job-name={run_name(token)}", "--quit-on-interrupt", *opts,
            f"--chdir={workdir}", *(["--pty"] if terminal else []),
            *([] if stdin else ["--input=none"]), "--",
            "/bin/sh", "-c", GUARD, GUARD_NAME, workdir, *argv]


# Signals handed to the job's tasks themselves (`scancel --signal`), so that CMD gets them as
# it would here: srun turns SIGTERM, SIGHUP and SIGQUIT into SIGKILL for the tasks. SIGINT
# stays srun's: `--quit-on-interrupt` forwards it to the tasks and ends the job.
JOB_SIGNALS = ("TERM", "HUP", "QUIT")
SCANCEL_TIMEOUT = 5
"""Seconds a scancel may wait for the controller: one that does not answer leaves the job to
srun's SIGTERM (which ends it once the controller is back)."""


def signal_argv(token: str, signal_name: str) -> list[str]:
    """scancel sending SIGNAL to the tasks of the `distsvc-run --on` command with `token`
    (its steps: an srun job has no batch shell)."""
    if not re.fullmatch(r"[A-Z0-9]+", signal_name):
        raise ValueError("bad signal name")
    return ["scancel", "--quiet", f"--signal={signal_name}", f"--name={run_name(token)}"]


def signal_script(token: str, signal_name: str) -> str:
    """signal_argv as shell, for the user whose shell it is."""
    return (f"timeout {SCANCEL_TIMEOUT} "
            + distsvc.remote.command_line(signal_argv(token, signal_name))
            + ' --user="$(id -un)" >/dev/null 2>&1')


CHECK_MARK = "distsvc-check-"
"""In srun --test-only's argv (an argument of `true`, which ignores it) + a token: what
`check_kill_script` finds it by."""


def check_kill_script(token: str) -> str:
    """Shell ending the check with `token` (its srun --test-only) on the cluster's side."""
    if not re.fullmatch(r"[0-9a-f]+", token):
        raise ValueError("bad token")
    return f'pkill -KILL -u "$(id -u)" -f -- {CHECK_MARK}{token} >/dev/null 2>&1; exit 0'


def check_script(workdir: str, opts: list[str], token: str = "0") -> str:
    """Shell for the cluster's side (login node or this machine) before anything runs: is the
    directory there, are Slurm's commands, and would Slurm take the request (`srun
    --test-only`, which asks the controller without running anything: ~15 ms)? It names the
    directory as an absolute path first (a relative one is the home's there, as for a host),
    in hex: a name may hold a newline, and no line of it may be taken for the whole. Its
    answer is read by `check_answer`."""
    test = distsvc.remote.command_line(["srun", "--test-only", *opts, "true",
                                        CHECK_MARK + token])
    return (f"cd -- {shlex.quote(workdir)} 2>/dev/null || "
            "{ echo distsvc-no-directory; exit 0; }\n"
            "printf distsvc-directory=; printf %s \"$PWD\" | od -An -v -tx1 | tr -d ' \\n'; "
            "echo\n"
            "command -v srun >/dev/null 2>&1 || { echo distsvc-no-srun; exit 0; }\n"
            f"{test} 2>&1; echo \"distsvc-test=$?\"")


def answered_directory(cluster: distsvc.config.Cluster, where: str, line: str) -> str:
    """The directory of the check's first line (`distsvc-directory=HEX`), which must be an
    absolute path; CannotRun for anything else (a login rc file that prints, for one)."""
    name, equals, value = line.partition("=")
    try:
        directory = os.fsdecode(bytes.fromhex(value)) if name == "distsvc-directory" and \
            equals else None
    except ValueError:
        directory = None
    if directory is None:
        raise distsvc.errors.CannotRun(
            f"cluster {cluster.name}: the shell on {where} printed {line[:60]!r} before the "
            "check's answer; make its start-up files (.bashrc, .profile) print nothing when "
            "not interactive")
    if not os.path.isabs(directory):
        raise distsvc.errors.CannotRun(
            f"cluster {cluster.name}: the check on {where} answered {directory!r} as the "
            "directory, not an absolute path")
    return directory


def check_answer(cluster: distsvc.config.Cluster, where: str, workdir: str, opts: list[str],
                 code: int, out: str) -> str:
    """Raise what `check_script`'s answer (`code`, `out`) means, or return the directory as
    an absolute path when Slurm takes it. `where` names the cluster's side in messages
    ("its login node h1", "this machine")."""
    lines = out.strip("\n").splitlines()
    if code != 0 or not lines:
        raise distsvc.errors.CannotRun(
            f"cluster {cluster.name}: the check on {where} failed (exit status {code}"
            + (f": {lines[-1]}" if lines else "") + ")")
    if lines == ["distsvc-no-directory"]:
        raise ClusterCannot(
            f"cluster {cluster.name}: {workdir}: no such directory on {where}"
            + (" (the cluster does not share it)" if cluster.login is not None else "")
            + "; choose one it has with -w/--workdir DIR")
    directory = answered_directory(cluster, where, lines.pop(0))
    if lines == ["distsvc-no-srun"]:
        raise distsvc.errors.CannotRun(
            f"cluster {cluster.name}: Slurm's srun is not installed on {where} (or not on "
            "its PATH)")
    status = lines[-1].removeprefix("distsvc-test=") if lines else ""
    said = "\n".join(lines[:-1])
    if status == "0":
        return directory
    raise refusal(cluster, said, opts)
