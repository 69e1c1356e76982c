"""Measuring hosts into the shared state file: the timer's pass and after user requests."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import distsvc.actions.placement
import distsvc.adapters.ssh
import distsvc.config
import distsvc.log
import distsvc.paths
import distsvc.scanplan
import distsvc.state


def measure_into_state(hosts: Sequence[distsvc.config.Host], config: distsvc.config.Config,
                       environ: Mapping[str, str], pool: distsvc.adapters.ssh.Pool) -> None:
    """Probe `hosts` (without holding the lock meanwhile), then merge the results in."""
    if not hosts:
        return
    log = distsvc.log.get()
    state = distsvc.actions.placement.measure(
        config, distsvc.paths.state_dir(environ), hosts, pool)
    for host in hosts:
        entry = state.hosts[host.name]
        m = entry.measurement
        if m is None:
            log.info("host unknown", host=host.name, error=entry.error)
        else:
            log.info("host measured", host=host.name, load=m.load1, cpus=m.cpus,
                     psi=m.psi_some_avg10, metric=m.metric, access_ms=entry.access_ms)


def timer_pass(config: distsvc.config.Config, environ: Mapping[str, str],
               pool: distsvc.adapters.ssh.Pool) -> list[str]:
    """One pass of the scan timer; the names of the hosts measured."""
    state = distsvc.state.store(distsvc.paths.state_dir(environ)).snapshot()
    due = distsvc.scanplan.timer_pass(config.hosts, state, time.time(), config.max_age * 2)
    measure_into_state(due, config, environ, pool)
    return [h.name for h in due]
