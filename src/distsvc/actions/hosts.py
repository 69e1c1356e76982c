"""The host table: measure what is stale, then rank every host."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import distsvc.actions.placement
import distsvc.config
import distsvc.paths
import distsvc.ranking
import distsvc.state

if TYPE_CHECKING:
    import distsvc.adapters.ssh


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
