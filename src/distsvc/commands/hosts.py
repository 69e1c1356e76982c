"""`distsvc hosts [--refresh] [--json]`: every host, best first, with what was measured.

JOBS is the user's unfinished jobs placed on each host: the daemon's rows carry their IDs
("jobs"); rows measured in-process (no daemon answered) get them from the job records on
disk, which are as fresh as the last daemon left them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

import distsvc.commands.common
import distsvc.commands.output

COLUMNS = ("HOST", "STATE", "LOAD/CPU", "CPUS", "PRESSURE", "MEM AVAIL", "ACCESS", "MEASURED",
           "RUNNING", "JOBS", "NOTE")


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="show the hosts, best first",
                       description="Measure hosts not measured within max_age and show all, "
                       "best first.")
    p.add_argument("--refresh", action="store_true", help="measure every host now")
    p.add_argument("--json", action="store_true", help=distsvc.commands.output.HELP)
    distsvc.commands.common.add_config_options(p)


def _fmt(value: Any, suffix: str = "", digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _age(seconds: float | None) -> str:
    """How long ago a host was measured: never "-0 s ago" for a measurement made a moment ago
    (age rounds to zero from either side), and a clock that went back said as such."""
    if seconds is None:
        return "-"
    if seconds <= -1:
        return f"{-seconds:.0f} s ahead (clock changed?)"
    return f"{seconds if seconds > 0 else 0.0:.0f} s ago"


def _memory(kb: int | None) -> str:
    if kb is None:
        return "-"
    return f"{kb / 1048576:.1f}G" if kb >= 1048576 else f"{kb / 1024:.0f}M"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [COLUMNS]
    for r in rows:
        load = _fmt(r["load_per_cpu"]) if r["metric"] is None else f"{r['metric']:g}*"
        running = str(r.get("running", 0)) + (f"/{r['slots']}" if r["slots"] else "")
        jobs = str(len(r["jobs"]))
        lines.append((r["host"], r["state"], load, _fmt(r["cpus"]), _fmt(r["cpu_pressure"], "%"),
                      _memory(r["mem_available_kb"]), _fmt(r["access_ms"], " ms", 1),
                      _age(r["age_s"]), running, jobs, r["error"] or ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)) + "  " + line[-1]
        for line in lines).replace("  \n", "\n").rstrip() + "\n"


def with_jobs(rows: list[dict[str, Any]], environ: Mapping[str, str]) -> list[dict[str, Any]]:
    """The rows, each with "jobs": the IDs of the unfinished jobs placed on its host. A row
    without that list (not the daemon's) gets it from the job records on disk."""
    if all(isinstance(r.get("jobs"), list) for r in rows):
        return rows
    placed = placed_jobs(environ)
    return [r if isinstance(r.get("jobs"), list) else {**r, "jobs": placed.get(r["host"], [])}
            for r in rows]


def placed_jobs(environ: Mapping[str, str]) -> dict[str, list[str]]:
    """Host -> IDs (oldest first) of the jobs on disk running or starting there: placed over
    SSH and not ended. A queued job's placement is an earlier attempt's, so it is not there.
    Unreadable records are left to `distsvc job list`, which reports them."""
    import distsvc.jobs.record
    import distsvc.jobs.store
    import distsvc.paths

    try:
        jobs, _ = distsvc.jobs.store.load_all(distsvc.paths.jobs_dir(environ))
    except OSError:  # an unreadable jobs directory: the host table still shows, without jobs
        return {}
    placed: dict[str, list[str]] = {}
    for job in reversed(jobs):
        if (job.placement.get("kind") == "ssh" and job.state != "queued"
                and job.state not in distsvc.jobs.record.FINAL and "host" in job.placement):
            placed.setdefault(job.placement["host"], []).append(job.id)
    return placed


def survey(config: Any, refresh: bool) -> list[dict[str, Any]]:
    """Through the daemon (its connections are warm) when one answers, else in-process."""
    import distsvc.actions.client
    import distsvc.config

    if distsvc.actions.client.enabled(os.environ):
        request = {"type": "hosts", "config": distsvc.config.to_mapping(config),
                   "refresh": refresh, "ssh_auth_sock": os.environ.get("SSH_AUTH_SOCK", "")}
        try:
            rows: list[dict[str, Any]] = distsvc.actions.client.query(request, os.environ)["rows"]
            return rows
        except distsvc.actions.client.Unavailable as why:
            distsvc.actions.client.fall_back(os.environ, why)
    import distsvc.actions.hosts

    return distsvc.actions.hosts.survey(config, os.environ, refresh)


def run(args: argparse.Namespace) -> int:
    config = distsvc.commands.common.load_config(args)
    rows = with_jobs(survey(config, args.refresh), os.environ)
    if args.json:
        distsvc.commands.output.emit("hosts", {"hosts": rows})
    elif not rows:
        print("no hosts configured: commands run on this machine "
              f"(add [[hosts]] to {config.source} or set DISTSVC_HOSTS)")
    else:
        print(table(rows), end="")
        if any(r["metric"] is not None for r in rows):
            print("* figure from the host's custom probe")
    return 0
