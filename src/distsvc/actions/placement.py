"""Choosing a host for a job and recording the placement, atomically under the state lock.

Without a daemon, each client keeps the shared state itself: measurements older than
config.max_age are refreshed (under the lock, so simultaneous clients do not all probe), the
best host with a free slot is chosen and the job is recorded there before the lock is
released, so the next client already counts it.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import distsvc.config
import distsvc.errors
import distsvc.ranking
import distsvc.state

if TYPE_CHECKING:  # importing it for real would load paramiko
    import distsvc.adapters.ssh

SLOT_WAIT_INTERVAL = 0.5
# Anonymous placements (answers to `best` queries) kept per host: enough to spread a burst,
# few enough that a script asking in a loop does not grow the state file without bound.
MAX_ANONYMOUS_PER_HOST = 64


@dataclasses.dataclass
class Choice:
    host: distsvc.config.Host
    placement: distsvc.state.Placement


def _prune(state: distsvc.state.State) -> None:
    state.placements = [p for p in state.placements if distsvc.state.placement_alive(p)]


def refresh(config: distsvc.config.Config, state: distsvc.state.State, now: float,
            pool: distsvc.adapters.ssh.Pool, force: bool = False) -> list[str]:
    """Probe the hosts whose measurement is older than max_age; update `state` in place.

    Returns the names of the hosts probed. Their connections stay in `pool`.
    """
    import distsvc.actions.measure

    stale = [h for h in config.hosts if force or (
        (entry := state.hosts.get(h.name)) is None or entry.measured_at is None
        or now - entry.measured_at > config.max_age)]
    for probed in distsvc.actions.measure.probe_hosts(stale, config, pool):
        record(state, probed.host.name, probed.state)
    return [h.name for h in stale]


def record(state: distsvc.state.State, name: str, measured: distsvc.state.HostState) -> None:
    previous = state.hosts.get(name)
    if previous is not None:
        measured.last_used = previous.last_used
    state.hosts[name] = measured


def refusals(hosts: collections.abc.Iterable[distsvc.config.Host], state: distsvc.state.State
              ) -> list[tuple[str, str]]:
    """(name, reason) of each of `hosts` whose host key was refused."""
    return [(h.name, entry.error or "host key refused") for h in hosts
            if (entry := state.hosts.get(h.name)) and entry.state == distsvc.state.REFUSED]


def unreachable_summary(config: distsvc.config.Config, state: distsvc.state.State) -> str:
    unknown = distsvc.state.HostState(error="not measured")
    reasons = [f"{h.name} ({state.hosts.get(h.name, unknown).error or 'unknown'})"
               for h in config.hosts]
    return "no reachable host: " + ", ".join(reasons)


def choose(config: distsvc.config.Config, directory: Path, exclude: collections.abc.Set[str],
           notice: collections.abc.Callable[[str], None], pool: distsvc.adapters.ssh.Pool,
           interrupted: collections.abc.Callable[[], int | None] = lambda: None,
           job_pid: int | None = None,
           warn: collections.abc.Callable[[str], None] | None = None) -> Choice:
    """The best host not in `exclude`, with the job (process `job_pid`, default this one)
    already recorded on it.

    Each host left out for a refused host key is said through `warn` (default `notice`),
    which -q does not silence: the user must decide about the key.

    When every host is at its slot limit, waits for a free slot until `interrupted()` names
    a signal, which ends the wait with Interrupted.
    """
    waited = False
    pid = os.getpid() if job_pid is None else job_pid
    while True:
        if (signum := interrupted()) is not None:
            raise distsvc.errors.Interrupted(signum)
        with distsvc.state.locked(directory):
            state = distsvc.state.read(directory)
            _prune(state)
            now = time.time()
            refresh(config, state, now, pool)
            hosts = [h for h in config.hosts if h.name not in exclude]
            ranked = distsvc.ranking.rank(hosts, state, now, stale_after=config.max_age * 2)
            known = [r for r in ranked if r.score is not None]
            free = distsvc.ranking.candidates(ranked)
            choice = None
            if free:
                best = free[0]
                placement = distsvc.state.Placement(
                    host=best.host.name, pid=pid,
                    started=distsvc.state.process_start_time(pid), placed_at=now)
                state.placements.append(placement)
                anonymous = [p for p in state.placements if p.pid == 0 and p.host == best.host.name]
                for old in anonymous[:-MAX_ANONYMOUS_PER_HOST]:
                    state.placements.remove(old)
                state.hosts[best.host.name].last_used = now
                choice = Choice(best.host, placement)
            distsvc.state.write(directory, state)
        if choice is not None:
            for name, reason in refusals(hosts, state):
                (warn or notice)(f"distsvc: {name} not used: {reason}")
            return choice
        if not known:
            raise distsvc.errors.CannotRun(unreachable_summary(config, state))
        if not waited:
            notice("distsvc: every host is at its slot limit; waiting for a free slot")
            waited = True
        time.sleep(SLOT_WAIT_INTERVAL)


def mark_unreachable(directory: Path, host: str, reason: str, placement: distsvc.state.Placement,
                     refused: bool = False) -> None:
    with distsvc.state.locked(directory):
        state = distsvc.state.read(directory)
        state.hosts[host] = distsvc.state.refused(reason) if refused else distsvc.state.HostState(
            state=distsvc.state.UNKNOWN, measured_at=time.time(), error=reason)
        state.placements = [p for p in state.placements if p != placement]
        distsvc.state.write(directory, state)


def release(directory: Path, placement: distsvc.state.Placement) -> None:
    """Forget a finished job (a killed client's entry is pruned by PID instead)."""
    with contextlib.suppress(OSError), distsvc.state.locked(directory):
        state = distsvc.state.read(directory)
        state.placements = [p for p in state.placements if p != placement]
        distsvc.state.write(directory, state)

