"""Scoring and ordering hosts. Pure functions over the state; no I/O.

Score (lower is better): the 1-minute load average per usable CPU, plus CPU pressure
(`some avg10`, a percentage) as a fraction. A custom probe's figure replaces both.

Jobs this user just placed on a host count as load until measurements show them. The load
average is an exponential average with a 60 s time constant, so a job that started `d`
seconds before a measurement is shown in it by the fraction 1 - exp(-d/60); the rest is
added here. That spreads many simultaneous starts across hosts instead of piling them on
the one that looked idle a moment ago.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import distsvc.config
import distsvc.state

LOAD_TIME_CONSTANT = 60.0
# Scores this close are ties, broken by access time (round trip of the probe).
TIE_WIDTH = 0.05


@dataclasses.dataclass(frozen=True)
class Ranked:
    host: distsvc.config.Host
    score: float | None  # None: unknown (unreachable, never measured, or stale)
    running: int  # this user's live jobs there
    access_ms: float | None

    @property
    def full(self) -> bool:
        return self.host.slots is not None and self.running >= self.host.slots


def placement_weight(placed_at: float, measured_at: float) -> float:
    if placed_at >= measured_at:
        return 1.0
    return math.exp(-(measured_at - placed_at) / LOAD_TIME_CONSTANT)


def base_score(host: distsvc.state.HostState, now: float, stale_after: float
               ) -> tuple[float, int] | None:
    """(the score before placements, the CPUs they are divided by); None when unknown. Apart
    from `score`, so the daemon's Tally keeps it per host and adds only the placements."""
    m = host.measurement
    if host.state != distsvc.state.UP or m is None or host.measured_at is None:
        return None
    if now - host.measured_at > stale_after:
        return None
    if m.metric is not None:
        return m.metric, 1
    if m.load1 is not None:
        cpus = m.cpus or 1
        return m.load1 / cpus + (m.psi_some_avg10 or 0.0) / 100.0, cpus
    return None


def placed_load(placements: Iterable[distsvc.state.Placement], measured_at: float) -> float:
    """The jobs `placements` hold that a measurement at `measured_at` does not show yet."""
    extra = 0.0
    for p in placements:  # placement_weight, inlined: this runs for every placement per query
        extra += 1.0 if p.placed_at >= measured_at else math.exp(
            (p.placed_at - measured_at) / LOAD_TIME_CONSTANT)
    return extra


def score(host: distsvc.state.HostState, placements: Iterable[distsvc.state.Placement],
          now: float, stale_after: float) -> float | None:
    base = base_score(host, now, stale_after)
    if base is None or host.measured_at is None:
        return None
    return base[0] + placed_load(placements, host.measured_at) / base[1]


def rank(hosts: Iterable[distsvc.config.Host], state: distsvc.state.State, now: float,
         stale_after: float) -> list[Ranked]:
    """All hosts, best first; unknown ones last, in configuration order.

    O(hosts log hosts + placements): the placements are grouped by host once, and each tie
    is a run of the sorted scores (costs that grow with the hosts must grow no faster)."""
    by_host: dict[str, list[distsvc.state.Placement]] = {}
    for p in state.placements:
        by_host.setdefault(p.host, []).append(p)
    unmeasured = distsvc.state.HostState()
    ranked = []
    for host in hosts:
        placements = by_host.get(host.name, [])
        entry = state.hosts.get(host.name, unmeasured)
        ranked.append(Ranked(
            host=host,
            score=score(entry, placements, now, stale_after),
            running=len(placements),
            access_ms=entry.access_ms,
        ))
    return order(ranked)


def order(ranked: list[Ranked]) -> list[Ranked]:
    """`ranked` (in configuration order) best first, ties by access time, unknown ones last."""
    known = sorted((r for r in ranked if r.score is not None), key=lambda r: r.score or 0.0)
    ordered: list[Ranked] = []
    first = 0
    while first < len(known):
        # Hosts within TIE_WIDTH of the best remaining one are a tie: the nearest goes first.
        limit = (known[first].score or 0.0) + TIE_WIDTH
        end = first
        while end < len(known) and (known[end].score or 0.0) <= limit:
            end += 1
        ordered += sorted(known[first:end], key=lambda r: r.access_ms
                          if r.access_ms is not None else math.inf)
        first = end
    return ordered + [r for r in ranked if r.score is None]


def candidates(ranked: list[Ranked]) -> list[Ranked]:
    """Hosts a new job may go to, best first: known and with a free slot."""
    return [r for r in ranked if r.score is not None and not r.full]
