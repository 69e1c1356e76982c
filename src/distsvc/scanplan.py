"""Which hosts to measure when. Pure functions over the state; no I/O.

- Each user request measures one of the three best hosts (the one measured longest ago):
  the hosts a user is about to use are the ones whose figures matter most.
- The timer's pass measures every host whose figure is older than the pass interval, oldest
  first (a round robin), at most MAX_PER_PASS of them, plus the most loaded known host, which
  is the likeliest to have freed up since.
- The pace follows the user: while they are active (a job placed within ACTIVE_WINDOW) the
  pass interval is ACTIVE_INTERVAL, otherwise IDLE_INTERVAL.
- No host is measured twice within MIN_GAP seconds, whatever asks for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import distsvc.config
import distsvc.ranking
import distsvc.state

ACTIVE_WINDOW = 600.0
ACTIVE_INTERVAL = 60.0
IDLE_INTERVAL = 900.0
MAX_PER_PASS = 256
MIN_GAP = 5.0
TOP = 3


def _age(state: distsvc.state.State, name: str, now: float) -> float:
    entry = state.hosts.get(name)
    if entry is None or entry.measured_at is None:
        return float("inf")
    return now - entry.measured_at


def last_activity(state: distsvc.state.State) -> float | None:
    used = [h.last_used for h in state.hosts.values() if h.last_used is not None]
    placed = [p.placed_at for p in state.placements]
    return max(used + placed, default=None)


def pass_interval(state: distsvc.state.State, now: float) -> float:
    last = last_activity(state)
    return ACTIVE_INTERVAL if last is not None and now - last < ACTIVE_WINDOW else IDLE_INTERVAL


def timer_pass(hosts: Sequence[distsvc.config.Host], state: distsvc.state.State, now: float,
               stale_after: float) -> list[distsvc.config.Host]:
    """The hosts the timer-driven scan measures now."""
    interval = pass_interval(state, now)
    due = sorted((h for h in hosts if _age(state, h.name, now) >= interval),
                 key=lambda h: -_age(state, h.name, now))[:MAX_PER_PASS]
    ranked = [r for r in distsvc.ranking.rank(hosts, state, now, stale_after)
              if r.score is not None]
    if ranked:
        busiest = ranked[-1].host
        if busiest not in due and _age(state, busiest.name, now) >= MIN_GAP:
            due.append(busiest)
    return due


def after_request(hosts: Sequence[distsvc.config.Host], state: distsvc.state.State, now: float,
                  stale_after: float) -> distsvc.config.Host | None:
    """The one host a user request measures: the stalest of the three best, if due."""
    ranked = distsvc.ranking.rank(hosts, state, now, stale_after)[:TOP]
    candidates = [r.host for r in ranked if _age(state, r.host.name, now) >= MIN_GAP]
    return max(candidates, key=lambda h: _age(state, h.name, now), default=None)
