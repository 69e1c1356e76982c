"""The host table: measure what is stale, then rank every host; and each cluster as Slurm
sees it (its nodes by state, CPUs, the user's pending and running jobs), asked at once."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import distsvc.actions.cluster
import distsvc.actions.placement
import distsvc.config
import distsvc.errors
import distsvc.paths
import distsvc.ranking
import distsvc.state

if TYPE_CHECKING:
    import distsvc.adapters.ssh
    import distsvc.jobs.record


def survey(config: distsvc.config.Config, environ: Mapping[str, str], refresh: bool,
           pool: distsvc.adapters.ssh.Pool | None = None) -> list[dict[str, Any]]:
    """One row per host, best first, from a state refreshed where older than max_age.

    With a `pool` (the daemon's), its warm connections are used and kept.
    """
    import distsvc.adapters.ssh

    directory = distsvc.paths.state_dir(environ)
    own_pool = pool is None
    pool = pool or distsvc.adapters.ssh.Pool()
    try:
        state = distsvc.actions.placement.refresh(config, directory, pool, force=refresh)
        now = time.time()
    finally:
        if own_pool:
            pool.close_all()
    rows = []
    for ranked in distsvc.ranking.rank(config.hosts, state, now, config.max_age * 2):
        entry = state.hosts.get(ranked.host.name, distsvc.state.HostState())
        m = entry.measurement
        rows.append({
            "host": ranked.host.name,
            "state": entry.state if ranked.score is not None or entry.state != "up" else "stale",
            "score": None if ranked.score is None else round(ranked.score, 3),
            "load_per_cpu": None if m is None or m.load1 is None else round(
                m.load1 / (m.cpus or 1), 3),
            "load1": None if m is None else m.load1,
            "cpus": None if m is None else m.cpus,
            "cpu_pressure": None if m is None else m.psi_some_avg10,
            "mem_available_kb": None if m is None else m.mem_available_kb,
            "metric": None if m is None else m.metric,
            "access_ms": entry.access_ms,
            "measured_at": entry.measured_at,
            "age_s": None if entry.measured_at is None else round(now - entry.measured_at, 1),
            "running": ranked.running,  # commands and jobs placed there (its slots)
            "slots": ranked.host.slots,
            "error": entry.error,
        })
    return rows


CLUSTERS_AT_ONCE = 8


def _cluster_row(cluster: distsvc.config.Cluster, config: distsvc.config.Config,
                 pool: distsvc.adapters.ssh.Pool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "cluster": cluster.name,
        "reach": "here" if cluster.login is None else cluster.login.name,
        "partition": cluster.partition, "state": "up", "nodes": {}, "cpus_idle": None,
        "cpus_total": None, "pending": None, "running": None, "error": None,
    }
    began = time.monotonic()
    try:
        summary = distsvc.actions.cluster.summary(
            cluster, distsvc.actions.cluster.runner(cluster, config, pool))
    except (distsvc.errors.DistsvcError, TimeoutError, OSError) as error:
        message = error.message if isinstance(error, distsvc.errors.DistsvcError) else str(
            error)
        return {**row, "state": "unreachable", "error": message,
                "access_ms": round((time.monotonic() - began) * 1000, 1)}
    _, idle, _, total = summary.cpus
    return {**row, "nodes": dict(sorted(summary.nodes.items())), "cpus_idle": idle,
            "cpus_total": total, "pending": summary.pending, "running": summary.running,
            "access_ms": round((time.monotonic() - began) * 1000, 1)}


def clusters(config: distsvc.config.Config,
             pool: distsvc.adapters.ssh.Pool | None = None) -> list[dict[str, Any]]:
    """One row per configured cluster, in the configuration's order, all asked at once
    (`CLUSTERS_AT_ONCE`); a cluster that does not answer is a row saying why."""
    if not config.clusters:
        return []
    import distsvc.adapters.ssh

    own_pool = pool is None
    pool = pool or distsvc.adapters.ssh.Pool()
    try:
        with concurrent.futures.ThreadPoolExecutor(
                min(CLUSTERS_AT_ONCE, len(config.clusters))) as executor:
            return list(executor.map(lambda c: _cluster_row(c, config, pool), config.clusters))
    finally:
        if own_pool:
            pool.close_all()


def placed(jobs: list[distsvc.jobs.record.Job]) -> dict[str, list[str]]:
    """Host or cluster name -> IDs (in the order given) of the jobs running or starting there:
    placed over SSH or handed to Slurm, and not ended. A queued job's placement is an
    earlier attempt's, so it is not there."""
    import distsvc.jobs.record

    found: dict[str, list[str]] = {}
    for job in jobs:
        if job.state == "queued" or job.state in distsvc.jobs.record.FINAL:
            continue
        name = distsvc.jobs.record.where(job)
        if name:
            found.setdefault(name, []).append(job.id)
    return found
