"""distsvc.ranking: scores, ordering, placements counted as load, and spreading of jobs."""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import time

import pytest

import distsvc.actions.placement
import distsvc.adapters.ssh
import distsvc.config
import distsvc.ranking
import distsvc.state
from distsvc.config import Host
from distsvc.probe import Measurement
from distsvc.ranking import TIE_WIDTH, candidates, rank, score
from distsvc.state import HostState, Placement, State

# Measurements in these tests are fresh: nothing is probed, the pool stays empty.
POOL = distsvc.adapters.ssh.Pool()

T0 = 1_700_000_000.0
STALE = 60.0


def up(load1: float | None = 0.0, cpus: int | None = 1, psi: float | None = None,
       metric: float | None = None, measured_at: float = T0, access_ms: float | None = 10.0,
       ) -> HostState:
    return HostState(state=distsvc.state.UP, measured_at=measured_at, access_ms=access_ms,
                     measurement=Measurement(load1=load1, cpus=cpus, psi_some_avg10=psi,
                                             metric=metric))


def placement(host: str, placed_at: float, pid: int = 1) -> Placement:
    return Placement(host=host, pid=pid, started=None, placed_at=placed_at)


# --- score -----------------------------------------------------------------------------------


def test_score_is_load_per_cpu_plus_psi_fraction():
    assert score(up(load1=3.0, cpus=4, psi=20.0), [], T0, STALE) == pytest.approx(0.95)


def test_score_without_psi_is_load_per_cpu():
    assert score(up(load1=3.0, cpus=4), [], T0, STALE) == pytest.approx(0.75)


def test_score_with_unknown_cpu_count_assumes_one():
    assert score(up(load1=1.5, cpus=None), [], T0, STALE) == pytest.approx(1.5)


def test_custom_metric_is_the_score():
    assert score(up(load1=None, cpus=None, metric=7.5), [], T0, STALE) == 7.5


def test_custom_metric_replaces_load_and_psi():
    assert score(up(load1=4.0, cpus=2, psi=50.0, metric=0.25), [], T0, STALE) == 0.25


def test_measurement_without_load_or_metric_has_no_score():
    assert score(up(load1=None, metric=None), [], T0, STALE) is None


def test_stale_measurement_has_no_score():
    host = up(load1=0.5)
    assert score(host, [], T0 + STALE + 0.001, STALE) is None
    assert score(host, [], T0 + STALE, STALE) == pytest.approx(0.5)  # exactly at the limit


@pytest.mark.parametrize("state", [distsvc.state.UNKNOWN, "down", ""])
def test_host_not_up_has_no_score(state):
    host = dataclasses.replace(up(load1=0.1), state=state)
    assert score(host, [], T0, STALE) is None


def test_never_measured_host_has_no_score():
    assert score(HostState(), [], T0, STALE) is None
    assert score(HostState(state=distsvc.state.UP, measured_at=T0), [], T0, STALE) is None
    assert score(HostState(state=distsvc.state.UP, measurement=Measurement(load1=0.1)),
                 [], T0, STALE) is None


def test_placement_newer_than_the_measurement_adds_one_job_per_cpu():
    host = up(load1=1.0, cpus=4)
    assert score(host, [placement("h", T0 + 5)], T0 + 5, STALE) == pytest.approx(0.25 + 0.25)
    assert score(host, [placement("h", T0 + 1), placement("h", T0 + 2)], T0 + 5, STALE) \
        == pytest.approx(0.25 + 0.5)


def test_placement_at_the_measurement_time_counts_fully():
    assert distsvc.ranking.placement_weight(T0, T0) == 1.0
    assert score(up(load1=0.0, cpus=2), [placement("h", T0)], T0, STALE) == pytest.approx(0.5)


@pytest.mark.parametrize("age", [1.0, 30.0, 60.0, 300.0])
def test_placement_older_than_the_measurement_adds_the_unseen_fraction(age):
    host = up(load1=2.0, cpus=4)
    expected = 0.5 + math.exp(-age / 60.0) / 4
    assert score(host, [placement("h", T0 - age)], T0, STALE) == pytest.approx(expected)
    assert distsvc.ranking.placement_weight(T0 - age, T0) == pytest.approx(math.exp(-age / 60))


def test_placements_on_a_custom_metric_count_one_each():
    host = up(load1=None, cpus=8, metric=2.0)
    assert score(host, [placement("h", T0 + 1)], T0 + 1, STALE) == pytest.approx(3.0)


# --- rank ------------------------------------------------------------------------------------


def names(ranked: list[distsvc.ranking.Ranked]) -> list[str]:
    return [r.host.name for r in ranked]


def test_rank_puts_the_best_first():
    hosts = [Host("a"), Host("b"), Host("c")]
    state = State(hosts={"a": up(load1=0.9), "b": up(load1=0.1), "c": up(load1=0.5)})
    ranked = rank(hosts, state, T0, STALE)
    assert names(ranked) == ["b", "c", "a"]
    assert [r.score for r in ranked] == pytest.approx([0.1, 0.5, 0.9])


def test_rank_puts_unknown_hosts_last_in_config_order():
    hosts = [Host("u1"), Host("a"), Host("u2"), Host("stale"), Host("b"), Host("u3")]
    state = State(hosts={
        "a": up(load1=2.0),
        "b": up(load1=1.0),
        "u2": HostState(state=distsvc.state.UNKNOWN, measured_at=T0, error="refused"),
        "stale": up(load1=0.0, measured_at=T0 - 10 * STALE),
        "u3": HostState(),
    })
    ranked = rank(hosts, state, T0, STALE)
    assert names(ranked) == ["b", "a", "u1", "u2", "stale", "u3"]
    assert [r.score is None for r in ranked] == [False, False, True, True, True, True]


def test_rank_includes_every_host_even_without_state():
    ranked = rank([Host("x"), Host("y")], State(), T0, STALE)
    assert names(ranked) == ["x", "y"]
    assert all(r.score is None and r.running == 0 and r.access_ms is None for r in ranked)


def test_ties_are_broken_by_access_time():
    hosts = [Host("slow"), Host("fast")]
    state = State(hosts={"slow": up(load1=0.51, access_ms=40.0),
                         "fast": up(load1=0.54, access_ms=5.0)})
    assert names(rank(hosts, state, T0, STALE)) == ["fast", "slow"]


def test_scores_further_apart_than_the_tie_width_are_not_ties():
    hosts = [Host("slow"), Host("fast")]
    state = State(hosts={"slow": up(load1=0.30, access_ms=40.0),
                         "fast": up(load1=0.54, access_ms=5.0)})
    assert names(rank(hosts, state, T0, STALE)) == ["slow", "fast"]


def test_equal_scores_and_access_times_keep_config_order():
    hosts = [Host("c"), Host("a"), Host("b")]
    state = State(hosts={n: up(load1=0.2) for n in "abc"})
    assert names(rank(hosts, state, T0, STALE)) == ["c", "a", "b"]


def test_scores_within_the_tie_width_across_a_bucket_edge_are_ties():
    hosts = [Host("slow"), Host("fast")]
    state = State(hosts={"slow": up(load1=0.049, access_ms=100.0),
                         "fast": up(load1=0.051, access_ms=1.0)})
    assert TIE_WIDTH > 0.051 - 0.049
    assert names(rank(hosts, state, T0, STALE)) == ["fast", "slow"]


def test_rank_counts_placements_per_host_as_running_and_as_load():
    hosts = [Host("a"), Host("b")]
    state = State(
        hosts={"a": up(load1=0.0, cpus=2), "b": up(load1=0.6, cpus=2)},
        placements=[placement("a", T0 + 1), placement("a", T0 + 2), placement("b", T0 + 1),
                    placement("gone", T0 + 1)],
    )
    ranked = {r.host.name: r for r in rank(hosts, state, T0 + 3, STALE)}
    assert ranked["a"].running == 2
    assert ranked["b"].running == 1
    assert ranked["a"].score == pytest.approx(1.0)
    assert ranked["b"].score == pytest.approx(0.8)


def test_full_means_running_reaches_slots():
    def ranked(slots: int | None, running: int) -> distsvc.ranking.Ranked:
        return distsvc.ranking.Ranked(Host("h", slots=slots), 0.0, running, None)

    assert not ranked(None, 1000).full
    assert not ranked(2, 1).full
    assert ranked(2, 2).full
    assert ranked(2, 3).full


def test_candidates_drop_full_and_unknown_hosts():
    hosts = [Host("full", slots=1), Host("free", slots=2), Host("unlimited"), Host("unknown")]
    state = State(
        hosts={"full": up(load1=0.0), "free": up(load1=0.3), "unlimited": up(load1=0.9)},
        placements=[placement("full", T0), placement("free", T0)],
    )
    ranked = rank(hosts, state, T0, STALE)
    assert names(ranked) == ["unlimited", "full", "free", "unknown"]
    assert names(candidates(ranked)) == ["unlimited", "free"]


def test_candidates_empty_when_every_known_host_is_full():
    hosts = [Host("a", slots=1)]
    state = State(hosts={"a": up()}, placements=[placement("a", T0)])
    assert candidates(rank(hosts, state, T0, STALE)) == []


# --- spreading -------------------------------------------------------------------------------


def test_consecutive_choices_spread_over_equally_loaded_hosts():
    """Six jobs on three idle 1-CPU hosts, each choice recorded as `choose` does: 2 per host."""
    hosts = [Host("h1"), Host("h2"), Host("h3")]
    state = State(hosts={h.name: up(load1=0.3, cpus=1, access_ms=10.0) for h in hosts})
    chosen = []
    for job in range(6):
        now = T0 + 0.1 * (job + 1)
        free = candidates(rank(hosts, state, now, STALE))
        best = free[0]
        state.placements.append(Placement(host=best.host.name, pid=os.getpid(), started=None,
                                          placed_at=now))
        chosen.append(best.host.name)
    assert collections.Counter(chosen) == {"h1": 2, "h2": 2, "h3": 2}
    assert chosen[:3] == ["h1", "h2", "h3"]


def test_real_choose_spreads_jobs_over_equally_loaded_hosts(tmp_path):
    """The same through actions.placement.choose with a fresh state file (no probing)."""
    directory = tmp_path / "state"
    config = distsvc.config.from_mapping(
        {"hosts": [{"name": "h1"}, {"name": "h2"}, {"name": "h3"}], "max_age": 3600},
        "test", None)
    now = time.time()
    with distsvc.state.locked(directory):
        distsvc.state.write(directory, State(hosts={
            h.name: up(load1=0.3, cpus=1, measured_at=now, access_ms=10.0)
            for h in config.hosts}))
    notices: list[str] = []
    chosen = []
    for _ in range(6):
        choice = distsvc.actions.placement.choose(config, directory, set(), notices.append, POOL)
        chosen.append(choice.host.name)
    assert collections.Counter(chosen) == {"h1": 2, "h2": 2, "h3": 2}
    assert notices == []
    state = distsvc.state.read(directory)
    assert len(state.placements) == 6
    assert all(p.pid == os.getpid() for p in state.placements)


def test_real_choose_respects_slots_and_excluded_hosts(tmp_path):
    directory = tmp_path / "state"
    config = distsvc.config.from_mapping(
        {"hosts": [{"name": "busy", "slots": 1}, {"name": "idle-but-excluded"},
                   {"name": "other"}], "max_age": 3600}, "test", None)
    now = time.time()
    with distsvc.state.locked(directory):
        distsvc.state.write(directory, State(hosts={
            "busy": up(load1=0.0, measured_at=now),
            "idle-but-excluded": up(load1=0.0, measured_at=now),
            "other": up(load1=5.0, measured_at=now),
        }))
    first = distsvc.actions.placement.choose(config, directory, {"idle-but-excluded"}, print, POOL)
    second = distsvc.actions.placement.choose(config, directory, {"idle-but-excluded"}, print, POOL)
    assert (first.host.name, second.host.name) == ("busy", "other")
    distsvc.actions.placement.release(directory, first.placement)
    third = distsvc.actions.placement.choose(config, directory, {"idle-but-excluded"}, print, POOL)
    assert third.host.name == "busy"


def test_anonymous_placements_are_capped_per_host(tmp_path):
    """`best` answers (pid 0) count as load, but a script asking in a loop stays bounded."""
    directory = tmp_path / "state"
    config = distsvc.config.from_mapping({"hosts": [{"name": "h1"}], "max_age": 3600},
                                         "test", None)
    with distsvc.state.locked(directory):
        distsvc.state.write(directory, State(hosts={
            "h1": up(load1=0.3, cpus=1, measured_at=time.time(), access_ms=1.0)}))
    for _ in range(100):
        distsvc.actions.placement.choose(config, directory, set(), print, POOL, job_pid=0)
    placements = distsvc.state.read(directory).placements
    assert len(placements) == distsvc.actions.placement.MAX_ANONYMOUS_PER_HOST
    assert all(p.pid == 0 and p.host == "h1" for p in placements)


def test_choose_from_memory_places_without_io_or_declines(tmp_path):
    """The daemon's accepting thread answers `best` with it: it records an anonymous
    placement on the best free host, and declines (None, nothing recorded) whenever choose()
    would have to probe a host or wait for a slot."""
    directory = tmp_path / "state"
    config = distsvc.config.from_mapping(
        {"hosts": [{"name": "a"}, {"name": "b"}], "max_age": 3600}, "test", None)
    now = time.time()
    with distsvc.state.locked(directory):
        distsvc.state.write(directory, State(hosts={
            "a": up(load1=0.1, measured_at=now, access_ms=1.0),
            "b": up(load1=0.5, measured_at=now, access_ms=1.0)}))
    first = distsvc.actions.placement.choose_from_memory(config, directory, pid=0)
    second = distsvc.actions.placement.choose_from_memory(config, directory, pid=0)
    assert first is not None and first.host.name == "a"
    assert second is not None and second.host.name == "b"  # a counts the first answer
    assert [(p.host, p.pid) for p in distsvc.state.read(directory).placements] == [
        ("a", 0), ("b", 0)]

    stale = dataclasses.replace(config, max_age=1)
    full = dataclasses.replace(config, hosts=tuple(
        dataclasses.replace(h, slots=1) for h in config.hosts))
    with distsvc.state.locked(directory):
        state = distsvc.state.read(directory)
        state.hosts["b"] = up(load1=0.5, measured_at=now - 10, access_ms=1.0)
        distsvc.state.write(directory, state)
    assert distsvc.actions.placement.choose_from_memory(stale, directory, pid=0) is None
    with distsvc.state.locked(directory):
        state = distsvc.state.read(directory)
        state.hosts["b"] = up(load1=0.5, measured_at=now, access_ms=1.0)
        distsvc.state.write(directory, state)
    assert distsvc.actions.placement.choose_from_memory(full, directory, pid=0) is None
    assert len(distsvc.state.read(directory).placements) == 2
