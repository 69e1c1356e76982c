"""`distsvc hosts [--refresh] [--json]`: every host, best first, with what was measured; then
every cluster with what Slurm says of it (nodes by state, idle CPUs, your pending and running
jobs there).

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
    p = sub.add_parser(name, help="show the hosts, best first, and the clusters",
                       description="Measure hosts not measured within max_age and show all, "
                       "best first; then each cluster as Slurm sees it now.")
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
    lines: list[tuple[str, ...]] = [COLUMNS]
    for r in rows:
        load = _fmt(r["load_per_cpu"]) if r["metric"] is None else f"{r['metric']:g}*"
        running = str(r.get("running", 0)) + (f"/{r['slots']}" if r["slots"] else "")
        jobs = str(len(r["jobs"]))
        lines.append((r["host"], r["state"], load, _fmt(r["cpus"]), _fmt(r["cpu_pressure"], "%"),
                      _memory(r["mem_available_kb"]), _fmt(r["access_ms"], " ms", 1),
                      _age(r["age_s"]), running, jobs, r["error"] or ""))
    return _layout(lines)


def _layout(lines: list[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell; the last (a note) left as it is."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)) + "  " + line[-1]
        for line in lines).replace("  \n", "\n").rstrip() + "\n"


def with_jobs(rows: list[dict[str, Any]], environ: Mapping[str, str], key: str = "host"
              ) -> list[dict[str, Any]]:
    """The rows, each with "jobs": the IDs of the unfinished jobs placed on its host (or
    cluster: `key`). A row without that list (not the daemon's) gets it from the job records
    on disk."""
    if all(isinstance(r.get("jobs"), list) for r in rows):
        return rows
    placed = placed_jobs(environ)
    return [r if isinstance(r.get("jobs"), list) else {**r, "jobs": placed.get(r[key], [])}
            for r in rows]


def placed_jobs(environ: Mapping[str, str]) -> dict[str, list[str]]:
    """Host or cluster -> IDs (oldest first) of the unfinished jobs on disk placed there
    (`actions.hosts.placed`). Unreadable records are left to `distsvc job list`, which
    reports them."""
    import distsvc.actions.hosts
    import distsvc.jobs.store
    import distsvc.paths

    try:
        jobs, _ = distsvc.jobs.store.load_all(distsvc.paths.jobs_dir(environ))
    except OSError:  # an unreadable jobs directory: the host table still shows, without jobs
        return {}
    return distsvc.actions.hosts.placed(list(reversed(jobs)))


CLUSTER_COLUMNS = ("CLUSTER", "STATE", "REACH", "PARTITION", "NODES", "CPUS IDLE", "PENDING",
                   "RUNNING", "JOBS", "NOTE")


def _nodes(nodes: Mapping[str, int]) -> str:
    return ", ".join(f"{count} {state}" for state, count in nodes.items()) or "-"


def cluster_table(rows: list[dict[str, Any]]) -> str:
    lines: list[tuple[str, ...]] = [CLUSTER_COLUMNS]
    for r in rows:
        cpus = "-" if r["cpus_total"] is None else f"{r['cpus_idle']}/{r['cpus_total']}"
        lines.append((r["cluster"], r["state"], r["reach"], r["partition"] or "(default)",
                      _nodes(r["nodes"]), cpus, _fmt(r["pending"]), _fmt(r["running"]),
                      str(len(r["jobs"])), r["error"] or ""))
    return _layout(lines)


def survey(config: Any, refresh: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hosts and clusters: through the daemon (its connections are warm) when one answers,
    else in-process."""
    import distsvc.actions.client
    import distsvc.config

    if distsvc.actions.client.enabled(os.environ):
        request = {"type": "hosts", "config": distsvc.config.to_mapping(config),
                   "refresh": refresh, "ssh_auth_sock": os.environ.get("SSH_AUTH_SOCK", "")}
        try:
            answer = distsvc.actions.client.query(request, os.environ)
            return answer["rows"], answer.get("clusters", [])
        except distsvc.actions.client.Unavailable as why:
            distsvc.actions.client.fall_back(os.environ, why)
    import distsvc.actions.hosts
    import distsvc.adapters.ssh

    pool = distsvc.adapters.ssh.Pool()
    try:
        return (distsvc.actions.hosts.survey(config, os.environ, refresh, pool),
                distsvc.actions.hosts.clusters(config, pool))
    finally:
        pool.close_all()


def run(args: argparse.Namespace) -> int:
    config = distsvc.commands.common.load_config(args)
    hosts, clusters = survey(config, args.refresh)
    rows = with_jobs(hosts, os.environ)
    clusters = with_jobs(clusters, os.environ, key="cluster")
    if args.json:
        distsvc.commands.output.emit("hosts", {"hosts": rows, "clusters": clusters})
        return 0
    if not rows:
        print("no hosts configured: commands run on this machine "
              f"(add [[hosts]] to {config.source} or set DISTSVC_HOSTS)")
    else:
        print(table(rows), end="")
        if any(r["metric"] is not None for r in rows):
            print("* figure from the host's custom probe")
    if clusters:
        print()
        print(cluster_table(clusters), end="")
    return 0
