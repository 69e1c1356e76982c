"""Measuring hosts: the probe over SSH, many hosts at once with a bounded fan-out."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Sequence

import distsvc.adapters.ssh
import distsvc.config
import distsvc.errors
import distsvc.probe
import distsvc.remote
import distsvc.state

MAX_CONCURRENT_PROBES = 32


@dataclasses.dataclass
class Probed:
    host: distsvc.config.Host
    state: distsvc.state.HostState


def probe_host(host: distsvc.config.Host, config: distsvc.config.Config,
               pool: distsvc.adapters.ssh.Pool) -> Probed:
    """Probe within config.probe_timeout over a pooled connection (made if needed).

    An unreachable host is `unknown` (`refused` for a refused host key); its connection,
    if any, leaves the pool.
    """
    started = time.monotonic()
    deadline = started + config.probe_timeout
    now = time.time()
    connection = None
    try:
        connection = pool.get(host, config.host_key_policy, config.probe_timeout)
        probe_started = time.monotonic()
        status, output = connection.run(
            distsvc.remote.probe_command(host.probe),
            timeout=max(0.05, deadline - time.monotonic()))
        access_ms = (time.monotonic() - probe_started) * 1000
        measurement = distsvc.probe.parse_output(output.decode("utf-8", "replace"))
        if measurement is None:
            tail = output.decode("utf-8", "replace").strip().splitlines()[-1:] or ["nothing"]
            raise distsvc.errors.HostUnreachable(
                host.name, f"probe printed no load figure (exit {status}; last line: "
                f"{tail[0][:80]!r})")
        return Probed(host, distsvc.state.HostState(
            state=distsvc.state.UP, measured_at=now, access_ms=round(access_ms, 2),
            measurement=measurement))
    except (distsvc.errors.HostUnreachable, TimeoutError, OSError, EOFError) as error:
        reason = error.reason if isinstance(error, distsvc.errors.HostUnreachable) else (
            str(error) or type(error).__name__)
        if connection is not None and not connection.alive():
            pool.discard(connection)  # a live one stays: other commands may be using it
        if isinstance(error, distsvc.errors.HostKeyRefused):
            return Probed(host, distsvc.state.refused(reason))
        return Probed(host, distsvc.state.HostState(
            state=distsvc.state.UNKNOWN, measured_at=now, error=reason))


def probe_hosts(hosts: Sequence[distsvc.config.Host], config: distsvc.config.Config,
                pool: distsvc.adapters.ssh.Pool) -> list[Probed]:
    if not hosts:
        return []
    workers = min(MAX_CONCURRENT_PROBES, len(hosts))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="probe") as pool_:
        return list(pool_.map(lambda h: probe_host(h, config, pool), hosts))
