"""`distsvc job VERB`: start, list, status, logs, stop, wait, pause, resume, remove, clean.

Every verb asks the daemon (actions/jobs.py) and prints for people (tables, plain lines) or,
with --json, the records as JSON. Exit statuses: 0 done; `wait` the job's own status (see
jobs/record.exit_status); 2 bad usage or a bad limit; 4 the job cannot do that now; 5 no
such job; 126/127 the command is not executable / not found; 255 no daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

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


def add_start_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="a name to recognise the job by")
    p.add_argument("-w", "--workdir", metavar="DIR",
                   help="directory to run in (default: the current directory)")
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
        v.add_argument("--json", action="store_true", help="machine-readable output")
        if ids == "one":
            v.add_argument("id", metavar="ID")
        elif ids == "many":
            v.add_argument("ids", metavar="ID", nargs="+")
        return v

    start = verb("start", "start CMD as a job; print its ID and return at once")
    add_start_options(start)
    start.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD ARGS")
    lst = verb("list", "list jobs, newest first")
    lst.add_argument("--state", action="append", metavar="STATE",
                     help="only jobs in this state (running, exited, killed, failed, "
                     "timeout, oom, unknown, paused); repeatable")
    verb("status", "show a job: state, command, times, limits, accounting", "one")
    logs = verb("logs", "show a job's output (stdout to stdout, stderr to stderr)", "one")
    which = logs.add_mutually_exclusive_group()
    which.add_argument("--stdout", action="store_true", help="only its stdout")
    which.add_argument("--stderr", action="store_true", help="only its stderr")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="live, until the job has ended and all its output is shown")
    logs.add_argument("-n", "--tail", type=int, metavar="N", help="only the last N lines")
    stop = verb("stop", "stop a job: SIGNAL to all its processes, SIGKILL after the grace",
                "one")
    stop.add_argument("--signal", "-s", default="TERM", help="signal to send first (TERM)")
    stop.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                      help="seconds before SIGKILL (10)")
    verb("wait", "wait for jobs to end; exit with the (last) job's status", "many")
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


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=1))


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
            "best_effort": args.best_effort}


def start(args: argparse.Namespace) -> int:
    import distsvc.actions.jobs

    answer = distsvc.actions.jobs.request(_start(args), os.environ)
    job = answer["jobs"][0]
    if args.json:
        _print_json(job)
    else:
        print(job["id"])
    return 0


def _list(args: argparse.Namespace) -> int:
    import distsvc.actions.jobs
    import distsvc.jobs.record

    answer = distsvc.actions.jobs.request({"type": "job_list", "states": args.state},
                                          os.environ)
    if args.json:
        _print_json(answer)
        return 0
    for line in answer.get("corrupt", []):
        print(f"distsvc: {line}", file=sys.stderr)
    rows = [("ID", "STATE", "STARTED", "NAME", "COMMAND")]
    for data in answer["jobs"]:
        job = _record(data)
        rows.append((job.id, distsvc.jobs.record.describe_state(job), _when(job.started or
                     job.created), job.name or "", _command(job.argv)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    return 0


def _command(argv: list[str]) -> str:
    import distsvc.protocol

    return distsvc.protocol.describe_command(argv)


def _status(args: argparse.Namespace) -> int:
    import distsvc.actions.jobs
    import distsvc.jobs.limits
    import distsvc.jobs.record

    data = distsvc.actions.jobs.request({"type": "job_status", "id": args.id},
                                        os.environ)["jobs"][0]
    if args.json:
        _print_json(data)
        return 0
    job = _record(data)
    asked = distsvc.jobs.limits.describe(job.limits)
    limits = ", ".join(
        f"{k} {v}" + (" (not enforced: " + job.not_enforced[k] + ")" if k in job.not_enforced
                      else "") for k, v in asked.items()) or "none"
    cpu = "-" if job.cpu_ns is None else f"{job.cpu_ns / 1e9:.2f} s"
    memory = (f"{_size(job.memory_peak)} peak" if job.memory_peak is not None else
              f"{_size(job.memory_current)} current" if job.memory_current is not None else "-")
    for label, value in (
            ("job", job.id + (f" ({job.name})" if job.name else "")),
            ("state", distsvc.jobs.record.describe_state(job)),
            ("command", _command(job.argv)), ("directory", job.cwd),
            ("placement", f"{job.placement.get('kind')}: {job.placement.get('unit')} "
                          f"({job.placement.get('manager')} manager)"),
            ("created", _when(job.created)), ("started", _when(job.started)),
            ("ended", _when(job.ended)), ("limits", limits),
            ("isolation", ", ".join(job.isolation) or "none"),
            ("cpu time", cpu), ("memory", memory)):
        print(f"{label + ':':<11}{value}")
    if job.reason and job.state not in ("failed", "unknown"):
        print(f"{'note:':<11}{job.reason}")
    for stream, cut in job.output_cut.items():
        print(f"{'output:':<11}{stream}: {cut} bytes cut by jobs.max_output")
    return 0


def _logs(args: argparse.Namespace) -> int:
    import distsvc.actions.jobs

    streams = ["stdout"] if args.stdout else ["stderr"] if args.stderr else ["stdout", "stderr"]
    if args.tail is not None and args.tail < 0:
        raise distsvc.errors.UsageError("--tail: must be 0 or more lines")
    distsvc.actions.jobs.read_output(args.id, os.environ, streams, args.follow, args.tail,
                                     distsvc.actions.jobs.write_to_own_streams)
    return 0


def _wait(args: argparse.Namespace) -> int:
    import distsvc.actions.jobs
    import distsvc.jobs.record

    waiter = distsvc.actions.jobs.Waiter(args.ids, os.environ)
    try:
        jobs = None
        while jobs is None:
            jobs = waiter.poll(3600.0)
    finally:
        waiter.close()
    if args.json:
        _print_json({"ok": True, "jobs": jobs})
    records = [_record(j) for j in jobs]
    return distsvc.jobs.record.exit_status(records[-1])


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
            _print_json(answer)
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
