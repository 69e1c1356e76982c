"""Which hosts the scanner measures when (distsvc.scanplan)."""

from __future__ import annotations

import distsvc.config
import distsvc.probe
import distsvc.scanplan
import distsvc.state

NOW = 1_000_000.0
HOSTS = tuple(distsvc.config.Host(name=f"h{i}") for i in range(6))


def measured(age: float, load: float, last_used: float | None = None) -> distsvc.state.HostState:
    return distsvc.state.HostState(
        state=distsvc.state.UP, measured_at=NOW - age, access_ms=1.0,
        measurement=distsvc.probe.Measurement(load1=load, cpus=1), last_used=last_used)


def state_of(**entries: distsvc.state.HostState) -> distsvc.state.State:
    return distsvc.state.State(hosts=dict(entries))


def names(hosts: list[distsvc.config.Host]) -> list[str]:
    return [h.name for h in hosts]


def test_idle_user_gets_the_slow_pace() -> None:
    state = state_of(**{h.name: measured(120, 0.5) for h in HOSTS})
    assert distsvc.scanplan.pass_interval(state, NOW) == distsvc.scanplan.IDLE_INTERVAL
    # Only the busiest host (likely to free up) is looked at; nothing else is due.
    assert distsvc.scanplan.timer_pass(HOSTS, state, NOW, 3600) == [HOSTS[-1]]


def test_active_user_gets_the_fast_pace_oldest_first() -> None:
    state = state_of(h0=measured(300, 0.1, last_used=NOW - 10), h1=measured(90, 0.2),
                     h2=measured(10, 0.9), h3=measured(200, 0.3))
    assert distsvc.scanplan.pass_interval(state, NOW) == distsvc.scanplan.ACTIVE_INTERVAL
    due = names(distsvc.scanplan.timer_pass(HOSTS[:4], state, NOW, 3600))
    # Round robin: oldest first; then the busiest (h2, measured 10 s ago, past MIN_GAP).
    assert due == ["h0", "h3", "h1", "h2"]


def test_never_measured_hosts_are_due_first() -> None:
    state = state_of(h0=measured(100, 0.1, last_used=NOW))
    due = names(distsvc.scanplan.timer_pass(HOSTS[:3], state, NOW, 3600))
    assert due[:2] == ["h1", "h2"] and "h0" in due


def test_no_host_is_measured_twice_within_the_minimum_gap() -> None:
    state = state_of(**{h.name: measured(1, 0.5 + i, last_used=NOW) for i, h in enumerate(HOSTS)})
    assert distsvc.scanplan.timer_pass(HOSTS, state, NOW, 3600) == []
    assert distsvc.scanplan.after_request(HOSTS, state, NOW, 3600) is None


def test_a_request_measures_the_stalest_of_the_three_best() -> None:
    state = state_of(h0=measured(20, 0.1), h1=measured(40, 0.2), h2=measured(30, 0.3),
                     h3=measured(500, 0.9), h4=measured(600, 1.0))
    host = distsvc.scanplan.after_request(HOSTS[:5], state, NOW, 3600)
    assert host is not None and host.name == "h1"  # h3 and h4 are staler but not top three


def test_unknown_hosts_can_be_measured_after_a_request() -> None:
    state = state_of(h0=measured(20, 0.1))
    host = distsvc.scanplan.after_request(HOSTS[:2], state, NOW, 3600)
    assert host is not None and host.name == "h1"
