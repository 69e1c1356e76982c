"""Choosing a host for a job and recording the placement, atomically.

Measurements older than config.max_age are refreshed first (outside any lock: none is held
during SSH I/O; probes of one host within a process are shared), then in one update of the
state (distsvc.state.store: the file under its lock, or a daemon's copy in memory) the best
host with a free slot is chosen and the job is recorded there, so the next choice, in this
process or another, already counts it.
"""

from __future__ import annotations

import bisect
import collections.abc
import contextlib
import dataclasses
import math
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
# A host that failed is measured again this soon when no other host will do.
RETRY_AFTER = 2.0
# Anonymous placements (answers to `best` queries) kept per host: enough to spread a burst
# (16 of them add 16 / cpus to a host's score, more than hosts' loads differ by), few
# enough that a script asking in a loop does not grow the state file without bound, and
# that the passes over them (prune, rank, trim) stay cheap: every `best` makes them, so
# the daemon's CPU per query grows with this (64 cost ~2x the whole query's CPU).
MAX_ANONYMOUS_PER_HOST = 16


@dataclasses.dataclass
class Choice:
    host: distsvc.config.Host
    placement: distsvc.state.Placement


def _prune(state: distsvc.state.State) -> None:
    now = time.time()
    ttl = distsvc.state.ANONYMOUS_PLACEMENT_TTL
    # Anonymous ones (most, under a burst of `best` queries) by their age, inline: this
    # runs over every placement on every choice.
    state.placements = [p for p in state.placements if (
        now - p.placed_at < ttl if p.pid == 0 else distsvc.state.placement_alive(p, now))]


def stale_hosts(config: distsvc.config.Config, state: distsvc.state.State, now: float,
                exclude: collections.abc.Set[str] = frozenset()) -> list[distsvc.config.Host]:
    """The hosts whose measurement is missing or older than max_age."""
    return [h for h in config.hosts if h.name not in exclude
            and _stale(state.hosts.get(h.name), now, config.max_age)]


def _stale(entry: distsvc.state.HostState | None, now: float, max_age: float) -> bool:
    return entry is None or entry.measured_at is None or now - entry.measured_at > max_age


def refresh(config: distsvc.config.Config, directory: Path, pool: distsvc.adapters.ssh.Pool,
            force: bool = False) -> distsvc.state.State:
    """Probe the hosts older than max_age (every host with `force`) and merge the results
    into the state file; the state as written. Connections stay in `pool`."""
    state = distsvc.state.store(directory).snapshot()
    hosts = list(config.hosts) if force else stale_hosts(config, state, time.time())
    return measure(config, directory, hosts, pool)


def measure(config: distsvc.config.Config, directory: Path,
            hosts: collections.abc.Sequence[distsvc.config.Host],
            pool: distsvc.adapters.ssh.Pool) -> distsvc.state.State:
    """Probe `hosts` without holding the state (SSH may take seconds), then merge the
    results into it; the state as kept."""
    import distsvc.actions.measure

    probed = distsvc.actions.measure.probe_hosts(hosts, config, pool)
    with distsvc.state.store(directory).update() as state:
        _prune(state)
        for result in probed:
            record(state, result.host.name, result.state)
    return state


def record(state: distsvc.state.State, name: str, measured: distsvc.state.HostState) -> None:
    previous = state.hosts.get(name)
    if previous is not None and previous.last_used != measured.last_used:
        measured = dataclasses.replace(measured, last_used=previous.last_used)
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


def _failed_hosts(config: distsvc.config.Config, state: distsvc.state.State,
                  exclude: collections.abc.Set[str]) -> list[distsvc.config.Host]:
    return [h for h in config.hosts if h.name not in exclude
            and (entry := state.hosts.get(h.name)) is not None
            and entry.state != distsvc.state.UP]


def _place(config: distsvc.config.Config, state: distsvc.state.State, now: float,
           exclude: collections.abc.Set[str], pid: int) -> tuple[Choice | None, bool]:
    """Record the job on the best free host, in `state`: (the choice or None, whether any
    host is usable at all, free or at its slot limit)."""
    hosts = [h for h in config.hosts if h.name not in exclude]
    ranked = distsvc.ranking.rank(hosts, state, now, stale_after=config.max_age * 2)
    known = [r for r in ranked if r.score is not None]
    free = distsvc.ranking.candidates(ranked)
    if not free:
        return None, bool(known)
    best = free[0]
    placement = distsvc.state.Placement(
        host=best.host.name, pid=pid,
        started=None if pid == 0 else distsvc.state.process_start_time(pid), placed_at=now)
    state.placements.append(placement)
    # best.running counts every placement there: only at the cap can the anonymous ones
    # exceed it, so most queries skip the pass that counts them.
    if pid == 0 and best.running >= MAX_ANONYMOUS_PER_HOST:
        _trim_anonymous(state, best.host.name)
    _used(state, best.host.name, now)
    return Choice(best.host, placement), True


def _trim_anonymous(state: distsvc.state.State, name: str) -> None:
    """Keep the MAX_ANONYMOUS_PER_HOST newest anonymous placements on host `name`."""
    anonymous = [i for i, p in enumerate(state.placements) if p.pid == 0 and p.host == name]
    if len(anonymous) > MAX_ANONYMOUS_PER_HOST:
        # By position, in one pass: list.remove would compare dataclasses one by one.
        oldest = set(anonymous[:-MAX_ANONYMOUS_PER_HOST])
        state.placements = [p for i, p in enumerate(state.placements) if i not in oldest]


def _used(state: distsvc.state.State, name: str, now: float) -> None:
    if (entry := state.hosts.get(name)) is not None:
        state.hosts[name] = dataclasses.replace(entry, last_used=now)


def choose(config: distsvc.config.Config, directory: Path, exclude: collections.abc.Set[str],
           notice: collections.abc.Callable[[str], None], pool: distsvc.adapters.ssh.Pool,
           interrupted: collections.abc.Callable[[], int | None] = lambda: None,
           job_pid: int | None = None,
           warn: collections.abc.Callable[[str], None] | None = None) -> Choice:
    """The best host not in `exclude`, with the job (process `job_pid`, default this one)
    already recorded on it.

    Hosts older than max_age are measured first (outside the state lock). A host that failed
    (probe or connect) only ranks last: when no other host is free, the failed ones are
    measured again at once (at most every RETRY_AFTER seconds), so a host that recovered
    serves the very next command. When every usable host is at its slot limit, waits for a
    free slot until `interrupted()` names a signal, which ends the wait with Interrupted.

    Each host left out for a refused host key is said through `warn` (default `notice`),
    which -q does not silence: the user must decide about the key.
    """
    waited = False
    retried = False
    pid = os.getpid() if job_pid is None else job_pid
    store = distsvc.state.store(directory)
    while True:
        if (signum := interrupted()) is not None:
            raise distsvc.errors.Interrupted(signum)
        if stale := stale_hosts(config, store.snapshot(), time.time(), exclude):
            measure(config, directory, stale, pool)
        with store.update() as state:
            _prune(state)
            choice, usable = _place(config, state, time.time(), exclude, pid)
        if choice is not None:
            hosts = [h for h in config.hosts if h.name not in exclude]
            for name, reason in refusals(hosts, state):
                (warn or notice)(f"distsvc: {name} not used: {reason}")
            return choice
        failed = _failed_hosts(config, state, exclude)
        if failed and not retried:
            # A failure is a hint, not a ban: with nothing better, try them again now.
            retried = True
            last = max((state.hosts[h.name].measured_at or 0.0) for h in failed)
            time.sleep(max(0.0, min(RETRY_AFTER, last + RETRY_AFTER - time.time())))
            measure(config, directory, failed, pool)
            continue
        if not usable:
            raise distsvc.errors.CannotRun(unreachable_summary(config, state))
        if not waited:
            notice("distsvc: every host is at its slot limit; waiting for a free slot")
            waited = True
        retried = False  # while waiting, failed hosts are retried every turn of the wait
        time.sleep(max(SLOT_WAIT_INTERVAL, RETRY_AFTER if failed else 0.0))


def choose_from_memory(config: distsvc.config.Config, directory: Path, pid: int
                       ) -> Choice | None:
    """choose() when it needs no I/O: the best free host, the job recorded on it as process
    `pid`; None when a host must be measured first or none is free (choose() then waits or
    probes). For the daemon's accepting thread, which must never wait on SSH or sleep."""
    with distsvc.state.store(directory).update() as state:
        if stale_hosts(config, state, time.time()):
            return None
        _prune(state)
        choice, _ = _place(config, state, time.time(), frozenset(), pid)
    return choice


class Tally:
    """choose_from_memory(config, directory, pid=0) query after query, without a pass over
    the placements per query: what the daemon's `best` answers from its accepting thread
    (daemon/hoststate.MemoryStore.place_anonymous keeps one while nothing else changes the
    state, and `state()` gives the state each query would have left, whenever another
    reader looks).

    Built from a state (pruned as _prune does), it keeps per configured host the positions
    of its placements in the state's list and the load they add (`ranking.placed_load`,
    summed in the list's order, so every score is the very float `ranking.rank` gives); a
    query then costs a pass over the hosts (staleness, ranking) and over the chosen host's
    placements. Named placements are checked for their process on every query, as _prune
    does. The first anonymous placement to expire ends it (`place` answers EXPIRED: build
    another, which prunes it); a measurement, a release, another process's write end it
    too, as they change the state through the store, which then builds another.
    """

    def __init__(self, config: distsvc.config.Config, state: distsvc.state.State,
                 now: float) -> None:
        self.config = config
        self.hosts = state.hosts  # shared, never changed here: uses are kept in `used`
        self.placements = list(state.placements)  # appended to; `removed` by position
        self.removed: set[int] = set()
        self.used: dict[str, float] = {}
        self.changed = False
        self.stale_after = config.max_age * 2
        self.positions: dict[str, list[int]] = {h.name: [] for h in config.hosts}
        self.named: list[int] = []
        self.expires = math.inf  # at or before the first anonymous placement's expiry
        ttl = distsvc.state.ANONYMOUS_PLACEMENT_TTL
        for i, p in enumerate(self.placements):
            if p.pid == 0:
                alive = now - p.placed_at < ttl
                if alive:
                    self.expires = min(self.expires, p.placed_at)
            else:
                alive = distsvc.state.placement_alive(p, now)
                if alive:
                    self.named.append(i)
            if not alive:
                self.removed.add(i)
                self.changed = True
            elif (mine := self.positions.get(p.host)) is not None:
                mine.append(i)
        self.base: dict[str, tuple[float, int] | None] = {}
        self.extra: dict[str, float] = {}
        # The known hosts by (score, position in the configuration), as ranking.order sorts
        # them before it breaks ties: kept sorted as scores change, so a query looks at the
        # best few, not at every host.
        self.index = {h.name: i for i, h in enumerate(config.hosts)}
        self.known: list[tuple[float, int]] = []
        self.key: dict[str, tuple[float, int]] = {}
        # The host measured longest ago: the first to go stale (then every query declines).
        # (None, as if stale, when one was never measured, or none is configured: no answer.)
        entries = [self.hosts.get(h.name) for h in config.hosts]
        measured = [e for e in entries if e is not None and e.measured_at is not None]
        self.oldest = min(measured, key=lambda e: e.measured_at or 0.0) if (
            measured and len(measured) == len(entries)) else None
        for host in config.hosts:
            entry = self.hosts.get(host.name)
            self.base[host.name] = None if entry is None else distsvc.ranking.base_score(
                entry, now, self.stale_after)
            self._count(host.name)

    def _count(self, name: str) -> None:
        """The load `name`'s placements add, and its place among the known hosts, again."""
        entry = self.hosts.get(name)
        if entry is not None and entry.measured_at is not None:
            self.extra[name] = distsvc.ranking.placed_load(
                [self.placements[i] for i in self.positions[name]], entry.measured_at)
        old = self.key.pop(name, None)
        if old is not None:
            del self.known[bisect.bisect_left(self.known, old)]
        base = self.base.get(name)
        if base is not None:  # the very float ranking.score gives
            key = (base[0] + self.extra[name] / base[1], self.index[name])
            bisect.insort(self.known, key)
            self.key[name] = key

    def _first_free(self) -> int | None:
        """The configuration index of what ranking.candidates(ranking.order(...))[0] would
        be: within the first group of ties (scores within TIE_WIDTH of the group's best)
        that has a host with a free slot, the nearest such host (by access time, then by
        score and configuration order, as order's stable sorts leave them)."""
        known, first = self.known, 0
        while first < len(known):
            end = bisect.bisect_right(
                known, (known[first][0] + distsvc.ranking.TIE_WIDTH, math.inf))
            chosen: tuple[float, int, int] | None = None  # (access, position, index)
            for position in range(first, end):
                index = known[position][1]
                host = self.config.hosts[index]
                if host.slots is not None and len(self.positions[host.name]) >= host.slots:
                    continue  # full
                access = self.hosts[host.name].access_ms
                candidate = (math.inf if access is None else access, position, index)
                if chosen is None or candidate < chosen:
                    chosen = candidate
            if chosen is not None:
                return chosen[2]
            first = end
        return None

    def _remove(self, i: int) -> None:
        self.removed.add(i)
        self.changed = True
        if (mine := self.positions.get(self.placements[i].host)) is not None:
            mine.remove(i)
            self._count(self.placements[i].host)

    def place(self, now: float) -> Choice | Expired | None:
        """The best free host with an anonymous placement recorded on it, as
        choose_from_memory would; None when it would decline; EXPIRED when a placement has
        expired since the tally was built (build another)."""
        if _stale(self.oldest, now, self.config.max_age):  # none is stale before it
            return None
        if now - self.expires >= distsvc.state.ANONYMOUS_PLACEMENT_TTL:
            return EXPIRED
        for i in [i for i in self.named if not distsvc.state.placement_alive(
                self.placements[i], now)]:
            self.named.remove(i)
            self._remove(i)
        index = self._first_free()
        if index is None:
            return None
        best = self.config.hosts[index]
        name = best.name
        placement = distsvc.state.Placement(host=name, pid=0, started=None, placed_at=now)
        mine = self.positions[name]
        running = len(mine)
        mine.append(len(self.placements))
        self.placements.append(placement)
        self.expires = min(self.expires, now)
        if running >= MAX_ANONYMOUS_PER_HOST:  # as _trim_anonymous, by position
            anonymous = [i for i in mine if self.placements[i].pid == 0]
            for i in anonymous[:-MAX_ANONYMOUS_PER_HOST]:
                self.removed.add(i)
                mine.remove(i)
        self._count(name)
        if name in self.hosts:
            self.used[name] = now
        self.changed = True
        return Choice(best, placement)

    def state(self) -> distsvc.state.State:
        """The state the queries so far left (as choose_from_memory would have)."""
        hosts = dict(self.hosts)
        for name, when in self.used.items():
            hosts[name] = dataclasses.replace(hosts[name], last_used=when)
        return distsvc.state.State(hosts, [p for i, p in enumerate(self.placements)
                                           if i not in self.removed])


class Expired:
    """What Tally.place answers when an anonymous placement expired since it was built."""


EXPIRED = Expired()


def tally(config: distsvc.config.Config, state: distsvc.state.State, now: float
          ) -> Tally | None:
    """A Tally of `state`, or None when a host must be measured first: choose_from_memory
    declines then before it prunes anything, and so must a tally's building."""
    return None if stale_hosts(config, state, now) else Tally(config, state, now)


def place_now(config: distsvc.config.Config, directory: Path, pool: distsvc.adapters.ssh.Pool,
              exclude: collections.abc.Set[str], pid: int, only: str | None = None
              ) -> Choice | None:
    """choose() without waiting, for the daemon's job queue: the best host with a free slot
    (`only` that one), its job recorded on it as process `pid`; None while every usable host
    is at its slot limit; CannotRun when none is usable. Hosts older than max_age are
    measured first, failed ones again at most every RETRY_AFTER seconds."""
    if only is not None:
        exclude = {h.name for h in config.hosts if h.name != only} | set(exclude)
    store = distsvc.state.store(directory)
    state = store.snapshot()
    now = time.time()
    stale = stale_hosts(config, state, now, exclude)
    stale += [h for h in _failed_hosts(config, state, exclude) if h not in stale
              and now - (state.hosts[h.name].measured_at or 0.0) > RETRY_AFTER]
    if stale:
        measure(config, directory, stale, pool)
    with store.update() as state:
        _prune(state)
        choice, usable = _place(config, state, time.time(), exclude, pid)
    if choice is None and not usable:
        hosts = [h for h in config.hosts if h.name not in exclude]
        raise distsvc.errors.CannotRun(unreachable_summary(
            dataclasses.replace(config, hosts=tuple(hosts)), state))
    return choice


def hold(directory: Path, host: str, pid: int, placed_at: float) -> distsvc.state.Placement:
    """Record a job running on `host` for process `pid` (the daemon, for a remote job it
    found again at its start), so slots and load count it."""
    placement = distsvc.state.Placement(
        host=host, pid=pid, started=distsvc.state.process_start_time(pid), placed_at=placed_at)
    with distsvc.state.store(directory).update() as state:
        _prune(state)
        state.placements.append(placement)
    return placement


def pin(config: distsvc.config.Config, name: str, directory: Path,
        interrupted: collections.abc.Callable[[], int | None] = lambda: None,
        job_pid: int | None = None) -> Choice:
    """Host `name` chosen by the caller (`run --all`), with the job recorded on it as choose()
    does, so that other commands count it; nothing is probed."""
    if (signum := interrupted()) is not None:
        raise distsvc.errors.Interrupted(signum)
    host = next(h for h in config.hosts if h.name == name)
    pid = os.getpid() if job_pid is None else job_pid
    with distsvc.state.store(directory).update() as state:
        _prune(state)
        now = time.time()
        placement = distsvc.state.Placement(
            host=name, pid=pid, started=distsvc.state.process_start_time(pid), placed_at=now)
        state.placements.append(placement)
        _used(state, name, now)
    return Choice(host, placement)


def mark_unreachable(directory: Path, host: str, reason: str, placement: distsvc.state.Placement,
                     refused: bool = False) -> None:
    with distsvc.state.store(directory).update() as state:
        state.hosts[host] = distsvc.state.refused(reason) if refused else distsvc.state.HostState(
            state=distsvc.state.UNKNOWN, measured_at=time.time(), error=reason)
        state.placements = _without(state.placements, placement)


def _without(placements: list[distsvc.state.Placement], placement: distsvc.state.Placement
             ) -> list[distsvc.state.Placement]:
    """`placements` but `placement`, compared by PID first (a dataclass's == builds tuples:
    with 100 commands running, a release compared 100)."""
    return [p for p in placements if p.pid != placement.pid or p != placement]


def release(directory: Path, placement: distsvc.state.Placement) -> None:
    """Forget a finished job (a killed client's entry is pruned by PID instead)."""
    with contextlib.suppress(OSError), distsvc.state.store(directory).update() as state:
        state.placements = _without(state.placements, placement)

