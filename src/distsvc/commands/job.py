"""`distsvc job VERB`: start, list, status, logs, stop, wait, pause, resume, remove, clean.

Every verb asks the daemon (actions/jobs.py) and prints for people (tables, plain lines) or,
with --json, a document of commands/output.py holding the records (docs/json.md); `logs`
refuses --json (see _logs). Exit statuses: 0 done; `wait` a job's own status (below);
2 bad usage or a bad limit; 4 the job cannot do that now; 5 no such job; 126/127 the command
is not executable / not found; 255 no daemon.

`wait ID...` exits, waiting for all of them (the default), 0 when every job succeeded (exited
0), else the status of the first job, in the order the IDs were given, that did not; with
`--any`, as soon as one has ended, the status of the first of the given jobs that has ended.
A job's status is jobs/record.exit_status: its exit code, 128+N for signal N, 124 timed out,
137 out of memory, 125 dependency failed, 126/127 could not start, 255 unknown.

Where a job goes (`--host NAME`, `--best`, `--local`, `--on CLUSTER`; none: the daemon's
default, the best host when hosts are configured) and how it queues (`--group`, `--after`,
`--retries`, `--retry-delay`) are checked here, before anything is sent: one line and exit 2
each.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from typing import Any

import distsvc.commands.output
import distsvc.errors

LIMIT_OPTIONS = (  # option, field, help
    ("--memory", "memory", "memory limit, e.g. 512M or 2G (MemoryMax)"),
    ("--cpu", "cpu", "CPU limit in percent of one CPU, e.g. 150%% (CPUQuota)"),
    ("--tasks", "tasks", "most processes and threads at once (TasksMax)"),
    ("--io-weight", "io_weight", "IO weight 1..10000 (IOWeight)"),
    ("--io-read", "io_read", "read bandwidth on the working directory's device, e.g. 10M"),
    ("--io-write", "io_write", "write bandwidth on the working directory's device, e.g. 10M"),
    ("--timeout", "timeout", "end the job after this long, e.g. 90s, 10m, 2h (RuntimeMaxSec)"),
)
ISOLATION = ("pid", "mount", "network")
MAX_GRACE = 3600.0
MAX_RETRIES = 100          # the daemon's bounds too (daemon/job_handlers.py): refused
MAX_RETRY_DELAY = 86400.0  # here first, in the user's words
_RETRIES = re.compile(r"[0-9]{1,3}")  # ASCII digits only: int() refuses "²", which isdigit takes
_ZERO_DURATION = re.compile(r"0+(\.0*)?[smhd]?")  # "0", "0s", "0.0m": no delay


def add_limit_options(p: argparse.ArgumentParser) -> None:
    """The limit options, shared by `distsvc job start` and `distsvc-run`."""
    for option, field, text in LIMIT_OPTIONS:
        p.add_argument(option, dest=f"limit_{field}", metavar="VALUE", help=text)
    p.add_argument("--best-effort", action="store_true",
                   help="start even where a limit or isolation cannot be enforced here "
                   "(status says which)")


def limits_from(args: argparse.Namespace) -> dict[str, Any]:
    """The asked limits, checked here (one line, exit 2, before anything starts)."""
    import distsvc.jobs.limits

    asked = {field: getattr(args, f"limit_{field}") for _, field, _ in LIMIT_OPTIONS
             if getattr(args, f"limit_{field}", None) is not None}
    return distsvc.jobs.limits.to_json(distsvc.jobs.limits.parse_all(asked))


def add_queue_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """Where a job goes and how it queues, shared by `distsvc job start` and `distsvc-run
    --detach` (`prefix` says "with --detach: " there). Checked by `queue_from`, not by
    argparse, so a refusal is one line."""
    p.add_argument("--host", dest="target_host", metavar="NAME",
                   help=prefix + "run the job on this configured host")
    p.add_argument("--best", dest="target_best", action="store_true",
                   help=prefix + "run it on the best host with a free slot when it starts "
                   "(the default when hosts are configured)")
    p.add_argument("--local", dest="target_local", action="store_true",
                   help=prefix + "run it on this machine (the default with no hosts)")
    p.add_argument("--group", metavar="G",
                   help=prefix + "queue it in group G, which has its own parallel limit")
    p.add_argument("--after", action="append", metavar="ID",
                   help=prefix + "start only when job ID has succeeded (repeatable, or "
                   "IDs separated by commas); if one does not, the job ends as "
                   "dependency-failed without running")
    p.add_argument("--retries", metavar="N",
                   help=prefix + f"start it again, up to N times (0..{MAX_RETRIES}), when it "
                   "does not succeed")
    p.add_argument("--retry-delay", metavar="S",
                   help=prefix + "wait this long between an attempt's end and the next, in "
                   "seconds or e.g. 30s, 2m (at most 1d)")


def queue_given(args: argparse.Namespace) -> bool:
    """Whether any option of add_queue_options was given."""
    return any(getattr(args, name, None) not in (None, False) for name in (
        "target_host", "target_best", "target_local", "group", "after", "retries",
        "retry_delay"))


def queue_from(args: argparse.Namespace) -> dict[str, Any]:
    """The job_start fields of add_queue_options, checked here (one line, exit 2). Options not
    given are left out, so the daemon's defaults apply."""
    fields: dict[str, Any] = {}
    # `--on CLUSTER`: job start's (add_on_option), or distsvc-run's own `--on` with --detach
    cluster = getattr(args, "target_cluster", None) or getattr(args, "on", None)
    targets = [option for option, given in (
        ("--host", args.target_host is not None), ("--best", args.target_best),
        ("--local", args.target_local), ("--on", cluster is not None)) if given]
    if len(targets) > 1:
        raise distsvc.errors.UsageError(
            f"{', '.join(targets)}: give only one of --host NAME, --best, --local and "
            "--on CLUSTER")
    if cluster is not None:
        if not cluster.strip() or not cluster.isprintable():
            raise distsvc.errors.UsageError(
                f"--on {json.dumps(cluster)}: give a configured cluster's name")
        fields.update(target="cluster", cluster=cluster)
    elif args.target_host is not None:
        if not args.target_host.strip() or not args.target_host.isprintable():
            raise distsvc.errors.UsageError(
                f"--host {json.dumps(args.target_host)}: give a configured host's name")
        fields.update(target="host", host=args.target_host)
    elif args.target_best:
        fields["target"] = "best"
    elif args.target_local:
        fields["target"] = "local"
    if args.group is not None:
        if not args.group.strip() or not args.group.isprintable():
            raise distsvc.errors.UsageError(
                f"--group {json.dumps(args.group)}: give a name (printable, not empty)")
        fields["group"] = args.group
    if args.after:
        fields["after"] = _job_ids("--after", args.after)
    if args.retries is not None:
        fields["retries"] = _retries(args.retries)
    if args.retry_delay is not None:
        fields["retry_delay"] = _retry_delay(args.retry_delay)
    return fields


def _job_ids(option: str, values: list[str]) -> list[str]:
    """IDs from repeated and comma-separated values, in order, each once ("3,4," is 3 and 4)."""
    import distsvc.jobs.store

    ids: list[str] = []
    for value in values:
        given = [text.strip() for text in value.split(",") if text.strip()] or [value]
        for id in given:
            try:
                distsvc.jobs.store._check_id(id)  # the store's rule: IDs become path names
            except distsvc.jobs.store.NoSuchJob:
                shown = id if id.isprintable() and id.strip() else json.dumps(id)
                raise distsvc.errors.UsageError(
                    f"{option} {shown}: not a job ID (IDs are numbers, as `distsvc job list` "
                    "shows)") from None
            if id not in ids:
                ids.append(id)
    return ids


def _retries(text: str) -> int:
    body = text.strip()
    if not _RETRIES.fullmatch(body) or int(body) > MAX_RETRIES:
        shown = text if text.isprintable() else json.dumps(text)
        raise distsvc.errors.UsageError(
            f"--retries {shown}: not a whole number from 0 to {MAX_RETRIES}")
    return int(body)


def _retry_delay(text: str) -> float:
    """Seconds, as jobs/limits.py parse_duration reads them (the same words for a bad one),
    but 0 is allowed: no delay."""
    import distsvc.jobs.limits

    if _ZERO_DURATION.fullmatch(text.strip()):
        return 0.0
    seconds = distsvc.jobs.limits.parse_duration("retry_delay", text)
    if seconds > MAX_RETRY_DELAY:
        raise distsvc.jobs.limits.LimitError(
            "retry_delay", text,
            f"too long (at most {distsvc.jobs.limits.format_duration(MAX_RETRY_DELAY)})")
    return seconds


def add_on_option(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """`--on CLUSTER`: the job goes to that Slurm cluster (the request's target "cluster");
    not in add_queue_options, as distsvc-run has an `--on` of its own."""
    p.add_argument("--on", dest="target_cluster", metavar="CLUSTER",
                   help=prefix + "submit it to this configured Slurm cluster (sbatch): "
                   "Slurm queues it; --after jobs there become Slurm dependencies")


def add_start_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="a name to recognise the job by")
    p.add_argument("-w", "--workdir", metavar="DIR",
                   help="directory to run in (default: the current directory)")
    add_queue_options(p)
    add_on_option(p)
    add_limit_options(p)
    p.add_argument("--isolate", metavar="KINDS",
                   help="isolation, comma-separated from pid,mount,network (default: the "
                   "config's jobs.isolate, all three unless set); 'none' for none")
    p.add_argument("--network", action="store_true",
                   help="keep the host's network (no network namespace)")


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="start and manage jobs (commands kept by the daemon)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, text: str, ids: str | None = None) -> argparse.ArgumentParser:
        v: argparse.ArgumentParser = verbs.add_parser(name, help=text, description=text)
        v.add_argument("--json", action="store_true", help=(
            "refused: the output is shown as it is (its facts: job status --json)"
            if name == "logs" else distsvc.commands.output.HELP))
        if ids == "one":
            v.add_argument("id", metavar="ID", help="the job's ID, as job start printed it")
        elif ids == "many":
            v.add_argument("ids", metavar="ID", nargs="+",
                           help="the jobs' IDs, as job start printed them")
        return v

    start = verb("start", "start CMD as a job; print its ID and return at once")
    add_start_options(start)
    start.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD ARGS",
                       help="the command and its arguments")
    lst = verb("list", "list jobs, newest first")
    lst.add_argument("--state", action="append", metavar="STATE",
                     help="only jobs in this state (queued, starting, running, paused, "
                     "exited, killed, timeout, oom, failed, dependency-failed, unknown); "
                     "repeatable")
    lst.add_argument("--host", metavar="NAME",
                     help="only jobs placed on, or to go to, this host")
    verb("status", "show a job: state, where it runs, its queue and attempts, command, "
         "times, limits, accounting", "one")
    logs = verb("logs", "show a job's output (stdout to stdout, stderr to stderr)", "one")
    which = logs.add_mutually_exclusive_group()
    which.add_argument("--stdout", action="store_true", help="only its stdout")
    which.add_argument("--stderr", action="store_true", help="only its stderr")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="live, until the job has ended and all its output is shown")
    logs.add_argument("-n", "--tail", type=int, metavar="N", help="only the last N lines")
    logs.add_argument("--attempt", type=int, metavar="N",
                      help="the output of ended attempt N of a job with retries (default: "
                      "the current attempt)")
    stop = verb("stop", "stop a job: SIGNAL to all its processes, SIGKILL after the grace",
                "one")
    stop.add_argument("--signal", "-s", default="TERM", help="signal to send first (TERM)")
    stop.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                      help="seconds before SIGKILL (10)")
    wait = verb("wait", "wait for jobs to end. Exit status: 0 if every job succeeded, "
                "else the status of the first job (in the order given) that did not; with "
                "--any, the status of the first of the given jobs that has ended", "many")
    wait.add_argument("--any", action="store_true",
                      help="return as soon as one of the jobs has ended")
    verb("pause", "freeze a job's whole process tree", "one")
    verb("resume", "let a paused job go on", "one")
    verb("remove", "remove ended jobs: record and output", "many")
    verb("clean", "remove every ended job")


def _signal_number(text: str) -> int:
    name = text.upper()
    if name.isdigit():
        number = int(name)
    else:
        try:
            number = signal.Signals[name if name.startswith("SIG") else "SIG" + name].value
        except KeyError:
            number = 0
    if not 0 < number < signal.NSIG:
        raise distsvc.errors.UsageError(f"--signal {text}: not a signal (e.g. TERM, INT, 9)")
    return number


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _emit(verb: str, data: dict[str, Any]) -> None:
    distsvc.commands.output.emit(f"job {verb}", data)


def _record(job: dict[str, Any]) -> Any:
    import distsvc.jobs.record

    return distsvc.jobs.record.from_json(job)


def _start(args: argparse.Namespace) -> dict[str, Any]:
    """The `job_start` request for the arguments (shared with distsvc-run --detach)."""
    import distsvc.actions.run

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise distsvc.errors.UsageError("no command given (usage: distsvc job start CMD ...)")
    isolate: list[str] | None = None
    if args.isolate is not None:
        isolate = [] if args.isolate == "none" else [
            k.strip() for k in args.isolate.split(",") if k.strip()]
        unknown = [k for k in isolate if k not in ISOLATION]
        if unknown:
            raise distsvc.errors.UsageError(
                f"--isolate {unknown[0]}: unknown (choose from {', '.join(ISOLATION)}, or none)")
    if args.network:
        isolate = [k for k in (isolate if isolate is not None else ISOLATION) if k != "network"]
    cwd = os.path.abspath(args.workdir) if args.workdir else \
        distsvc.actions.run.current_directory(os.environ)
    return {"type": "job_start", "argv": command, "cwd": cwd, "env": dict(os.environ),
            "name": args.name, "limits": limits_from(args), "isolate": isolate,
            "best_effort": args.best_effort, **queue_from(args)}


def start(args: argparse.Namespace) -> int:
    import distsvc.actions.jobs

    answer = distsvc.actions.jobs.request(_start(args), os.environ)
    job = answer["jobs"][0]
    if args.json:
        _emit("start", {"job": job})
    else:
        print(job["id"])
    return 0


def _list(args: argparse.Namespace) -> int:
    import distsvc.actions.jobs

    message: dict[str, Any] = {"type": "job_list", "states": args.state}
    if args.host is not None:
        message["host"] = args.host
    answer = distsvc.actions.jobs.request(message, os.environ)
    if args.json:
        _emit("list", {"jobs": answer["jobs"], "corrupt": answer.get("corrupt", [])})
        return 0
    for line in answer.get("corrupt", []):
        print(f"distsvc: {line}", file=sys.stderr)
    print(list_table(answer["jobs"]), end="")
    return 0


def list_table(jobs: list[dict[str, Any]]) -> str:
    """`job list` for people: one row per record, the command last (it is not padded)."""
    import distsvc.jobs.record

    rows = [("ID", "STATE", "STARTED", "HOST", "NAME", "COMMAND")]
    for data in jobs:
        job = _record(data)
        rows.append((job.id, _short(distsvc.jobs.record.describe_state(job)),
                     _when(job.started or job.created), host_of(job), job.name or "",
                     _command(job.argv)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "".join("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True))
                   + "  " + row[-1] + "\n" for row in rows)


STATE_WIDTH = 60  # of `list`'s state column; `status` says it all


def _short(text: str) -> str:
    return text if len(text) <= STATE_WIDTH else text[:STATE_WIDTH - 3] + "..."


def host_of(job: Any) -> str:
    """Where a job is (its placement's host, or "local"), or for one not placed (queued, or
    never started) where it is to go: its target host, "local", or "-" (the best host)."""
    import distsvc.jobs.record

    kind = job.placement.get("kind")
    if job.state != "queued" and kind in ("ssh", "slurm"):
        return distsvc.jobs.record.where(job) or "?"
    if job.state != "queued" and kind == "local":
        return "local"
    if job.target in ("host", "cluster") and job.target_host:
        return str(job.target_host)
    return "local" if job.target == "local" else "-"


def _command(argv: list[str]) -> str:
    import distsvc.protocol

    return distsvc.protocol.describe_command(argv)


def _status(args: argparse.Namespace) -> int:
    import distsvc.actions.jobs

    data = distsvc.actions.jobs.request({"type": "job_status", "id": args.id},
                                        os.environ)["jobs"][0]
    if args.json:
        _emit("status", {"job": data})
        return 0
    print(status_text(data), end="")
    return 0


LABEL = 12  # the width of status's labels


def status_text(data: dict[str, Any]) -> str:
    """`job status` for people: one line per fact, "label: value"; a fact of several values
    (earlier attempts, skipped hosts) goes on lines of its own under its label."""
    import distsvc.jobs.limits
    import distsvc.jobs.record

    job = _record(data)
    asked = distsvc.jobs.limits.describe(job.limits)
    limits = ", ".join(
        f"{k} {v}" + (" (not enforced: " + job.not_enforced[k] + ")" if k in job.not_enforced
                      else "") for k, v in asked.items()) or "none"
    cpu = _seconds(job.cpu_ns)
    memory = (f"{_size(job.memory_peak)} peak" if job.memory_peak is not None else
              f"{_size(job.memory_current)} current" if job.memory_current is not None else "-")
    facts: list[tuple[str, str | list[str]]] = [
        ("job", job.id + (f" ({job.name})" if job.name else "")),
        ("state", distsvc.jobs.record.describe_state(job)),
        ("command", _command(job.argv)), ("directory", job.cwd),
        ("target", _target(job)), ("placement", _placement(job))]
    if job.placement.get("kind") in ("ssh", "slurm") and job.placement.get("dir"):
        facts.append(("remote dir", job.placement["dir"]))
    if job.placement.get("kind") == "slurm":
        facts += slurm_facts(job)
    if job.group is not None:
        facts.append(("group", job.group))
    if job.after:
        facts.append(("after", ", ".join(job.after)))
    if job.retries or job.attempts:
        facts.append(("attempt", f"{job.attempt} of {job.retries + 1}"
                      + (f", the next no earlier than {_when(job.not_before)}"
                         if job.state == "queued" and job.not_before else "")))
        facts.append(("earlier", [_attempt(a) for a in job.attempts]))
    if job.skipped:
        facts.append(("skipped", [f"{host}: {why}" for host, why in job.skipped.items()]))
    facts += [("created", _when(job.created)), ("started", _when(job.started)),
              ("ended", _when(job.ended)), ("limits", limits),
              ("isolation", _isolation(job)), ("cpu time", cpu), ("memory", memory)]
    if job.reason and job.state not in ("failed", "unknown", "queued", "dependency-failed"):
        facts.append(("note", job.reason))
    if job.stopped:
        facts.append(("note", "stopped by you" + (", so not retried" if job.retries else "")))
    for stream, cut in job.output_cut.items():
        facts.append(("output", f"{stream}: {cut} bytes cut by jobs.max_output"))
    lines = []
    for label, value in facts:
        values = [value] if isinstance(value, str) else value
        for i, text in enumerate(values):
            lines.append(f"{label + ':' if i == 0 else '':<{LABEL}}{text}\n")
    return "".join(lines)


def slurm_facts(job: Any) -> list[tuple[str, str | list[str]]]:
    """What Slurm says of a cluster's job: its state and reason, node, accounting (sacct's
    Elapsed, TotalCPU, MaxRSS, in `cpu time` and `memory` too) or, where the cluster keeps
    none, that it keeps none and scontrol's run time."""
    place = job.placement
    facts: list[tuple[str, str | list[str]]] = []
    state = place.get("slurm_state", "")
    if state:
        facts.append(("slurm", state + (f" ({place['slurm_reason']})"
                                        if place.get("slurm_reason") else "")))
    if place.get("node"):
        facts.append(("node", place["node"]))
    accounting = place.get("accounting", "")
    if accounting == "sacct":
        facts.append(("accounting", f"sacct: elapsed {place.get('elapsed', '-')}, CPU time "
                      f"{_seconds(job.cpu_ns)}, MaxRSS {_size(job.memory_peak)}"))
    elif accounting.startswith("none"):
        facts.append(("accounting", "none on this cluster (" + accounting[5:].strip()
                      + "); scontrol's run time " + place.get("run_time", "-")))
    elif place.get("run_time"):
        facts.append(("run time", place["run_time"] + " (scontrol; sacct once it ended)"))
    return facts


def _seconds(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e9:.2f} s"


def _isolation(job: Any) -> str:
    """As applied; for a job that has not started yet, as asked."""
    if job.state != "queued":
        return ", ".join(job.isolation) or "none"
    if job.isolation_asked is None:
        return "the config's jobs.isolate, when it starts"
    return (", ".join(job.isolation_asked) or "none") + ", when it starts"


def _target(job: Any) -> str:
    if job.target == "host":
        return f"host {job.target_host}"
    if job.target == "best":
        return "the best host with a free slot when it starts"
    if job.target == "cluster":
        return f"cluster {job.target_host} (Slurm)"
    return "this machine"


def _placement(job: Any) -> str:
    """Where the current attempt runs or ran; "none" before it started."""
    import distsvc.jobs.record

    place = job.placement
    if job.state == "queued" or not place.get("kind"):
        return "none (it never started)" if job.state in distsvc.jobs.record.FINAL else \
            "none yet"
    if place["kind"] == "slurm":
        return (f"slurm: cluster {place.get('cluster')}, job {place.get('slurm_id', '?')}"
                + (f" on {place['node']}" if place.get("node") else ""))
    if place["kind"] == "ssh":
        if place.get("mode") == "supervisor":
            return f"ssh: {place.get('host')}, supervisor (no systemd user manager there)"
        return f"ssh: {place.get('host')}, systemd user unit {place.get('unit')}"
    return f"{place['kind']}: {place.get('unit')} ({place.get('manager')} manager)"


def _attempt(summary: dict[str, Any]) -> str:
    """One ended attempt (record.attempt_summary) in a line: its number, how it ended, where."""
    place = summary.get("placement") or {}
    where = (f" on {place.get('host')}" if place.get("kind") == "ssh" else
             f" on cluster {place.get('cluster')}" if place.get("kind") == "slurm" else
             " on this machine" if place.get("kind") == "local" else "")
    ended = f", ended {_when(summary['ended'])}" if summary.get("ended") else ""
    said = summary.get("describe") or summary.get("state")
    return f"attempt {summary.get('attempt', '?')}{where}: {said}{ended}"


def _logs(args: argparse.Namespace) -> int:
    """A job's output as it is, byte for byte. Not with --json: the output is bytes, which
    JSON can carry only re-encoded (lossy as text, or base64 a script must undo), and
    stdout and stderr already come apart on our own stdout and stderr; the facts about the
    output (where it was cut, the attempts) are in `job status --json`."""
    import distsvc.actions.jobs

    if args.json:
        raise distsvc.errors.UsageError(
            "job logs --json: a job's output is shown as it is, not as JSON (its facts are in "
            "`distsvc job status --json ID`)")
    streams = ["stdout"] if args.stdout else ["stderr"] if args.stderr else ["stdout", "stderr"]
    if args.tail is not None and args.tail < 0:
        raise distsvc.errors.UsageError("--tail: must be 0 or more lines")
    if args.attempt is not None and args.attempt < 1:
        raise distsvc.errors.UsageError("--attempt: attempts are numbered from 1")
    if args.attempt is not None and args.follow:
        raise distsvc.errors.UsageError(
            "--attempt with --follow: an ended attempt's output is complete (drop --follow, "
            "or --attempt to follow the current attempt)")
    distsvc.actions.jobs.read_output(args.id, os.environ, streams, args.follow, args.tail,
                                     distsvc.actions.jobs.write_to_own_streams,
                                     attempt=args.attempt)
    return 0


def _wait(args: argparse.Namespace) -> int:
    import distsvc.actions.jobs

    waiter = distsvc.actions.jobs.Waiter(args.ids, os.environ, any_ended=args.any)
    try:
        jobs = None
        while jobs is None:
            jobs = waiter.poll(3600.0)
    finally:
        waiter.close()
    status = wait_status(args.ids, jobs, args.any)
    if args.json:
        _emit("wait", {"jobs": jobs, "exit_status": status})
    return status


def wait_status(ids: list[str], jobs: list[dict[str, Any]], any_ended: bool) -> int:
    """What `wait` exits with (the module's docstring says it for users), from the IDs as
    given and the daemon's records of them. All: 0 if every job succeeded, else the status of
    the first (in the order given) that did not. Any: the status of the first that ended."""
    import distsvc.jobs.record

    record = distsvc.jobs.record
    records = {job.id: job for job in map(_record, jobs)}
    for id in ids:
        job = records.get(id)  # None: the daemon did not say, so nothing tells how it ended
        if any_ended:
            if job is not None and job.state in record.FINAL:
                return record.exit_status(job)
        elif job is None or not record.succeeded(job):
            return record.EXIT_UNKNOWN if job is None else record.exit_status(job)
    return record.EXIT_UNKNOWN if any_ended else 0


def _simple(kind: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        import distsvc.actions.jobs
        import distsvc.jobs.record

        message: dict[str, Any] = {"type": kind}
        if hasattr(args, "id"):
            message["id"] = args.id
        if hasattr(args, "ids"):
            message["ids"] = args.ids
        if kind == "job_stop":
            message["signal"] = _signal_number(args.signal)
            if not 0 <= args.grace <= MAX_GRACE:  # also refuses nan and inf
                raise distsvc.errors.UsageError(
                    f"--grace {args.grace:g}: must be 0 to {MAX_GRACE:g} seconds")
            message["grace"] = args.grace
        answer = distsvc.actions.jobs.request(message, os.environ, timeout=args_timeout(args))
        if args.json:
            data = {"removed": answer["removed"]} if "removed" in answer else \
                {"job": answer["jobs"][0]}
            if kind == "job_resume":  # how it was paused, so how it was let go on
                data["method"] = answer.get("method")
            _emit(args.verb, data)
            return 0
        if "removed" in answer:
            removed = answer["removed"]
            print(f"removed {len(removed)} job{'s' if len(removed) != 1 else ''}"
                  + (": " + " ".join(removed) if removed else ""))
            return 0
        job = _record(answer["jobs"][0])
        said = distsvc.jobs.record.describe_state(job)
        if kind == "job_resume":
            said = f"running (resumed; it was paused with the {answer.get('method')})"
        print(f"job {job.id}: {said}")
        return 0
    return run


def args_timeout(args: argparse.Namespace) -> float:
    return 60.0 + float(getattr(args, "grace", 0.0) or 0.0)


VERBS = {
    "start": start,
    "list": _list,
    "status": _status,
    "logs": _logs,
    "wait": _wait,
    "stop": _simple("job_stop"),
    "pause": _simple("job_pause"),
    "resume": _simple("job_resume"),
    "remove": _simple("job_remove"),
    "clean": _simple("job_clean"),
}


def run(args: argparse.Namespace) -> int:
    return int(VERBS[args.verb](args))
