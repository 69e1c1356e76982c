"""Measuring hosts: the probe over SSH, many hosts at once with a bounded fan-out."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
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
    """Probe within config.probe_timeout on a session of its own (a pooled connection with
    room, or a new one). An unreachable host is `unknown`; a dead connection leaves the pool
    the next time it is looked at."""
    started = time.monotonic()
    deadline = started + config.probe_timeout
    now = time.time()
    try:
        sessions = pool.sessions(host, config.host_key_policy, config.probe_timeout)
        probe_started = time.monotonic()
        status, output = sessions.run(
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
    except (distsvc.errors.CannotRun, TimeoutError, OSError, EOFError) as error:
        reason = (error.reason if isinstance(error, distsvc.errors.HostUnreachable)
                  else error.message if isinstance(error, distsvc.errors.CannotRun)
                  else str(error) or type(error).__name__)
        return Probed(host, distsvc.state.HostState(
            state=distsvc.state.UNKNOWN, measured_at=now, error=reason))


_in_flight_lock = threading.Lock()
_in_flight: dict[tuple[int, str], concurrent.futures.Future[Probed]] = {}


def probe_shared(host: distsvc.config.Host, config: distsvc.config.Config,
                 pool: distsvc.adapters.ssh.Pool) -> Probed:
    """probe_host, but callers that ask for a host already being probed over the same pool
    share that probe's result (fifty commands arriving at once make one probe per host)."""
    key = (id(pool), host.name)
    with _in_flight_lock:
        future = _in_flight.get(key)
        mine = future is None
        if future is None:
            future = _in_flight[key] = concurrent.futures.Future()
    if not mine:
        return future.result()
    try:
        result = probe_host(host, config, pool)
        future.set_result(result)
        return result
    except BaseException as error:
        future.set_exception(error)
        raise
    finally:
        with _in_flight_lock:
            del _in_flight[key]


def probe_hosts(hosts: Sequence[distsvc.config.Host], config: distsvc.config.Config,
                pool: distsvc.adapters.ssh.Pool) -> list[Probed]:
    if not hosts:
        return []
    if len(hosts) == 1:
        return [probe_shared(hosts[0], config, pool)]
    workers = min(MAX_CONCURRENT_PROBES, len(hosts))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="probe") as pool_:
        return list(pool_.map(lambda h: probe_shared(h, config, pool), hosts))
