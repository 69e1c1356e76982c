"""The pure helpers behind the benchmarks' growth and goal tables (bench/common.py,
bench/scaling_bench.py, bench/daemon_bench.py): what "flat", "linear" and "met" mean in
docs/benchmarks.md rests on them, so they are tested here without running a benchmark."""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402  (lives in bench/, hence the path above)
import daemon_bench  # noqa: E402
import scaling_bench  # noqa: E402


def test_growth_gives_each_step_its_ratio_and_exponent() -> None:
    flat = common.growth([(1, 5.0), (10, 5.0), (100, 5.0)])
    assert flat[0] is None
    assert flat[1:] == [(1.0, 0.0), (1.0, 0.0)]
    linear = common.growth([(10, 2.0), (100, 20.0), (1000, 200.0)])
    assert [step and round(step[1], 6) for step in linear[1:]] == [1.0, 1.0]
    quadratic = common.growth([(1, 1.0), (10, 100.0)])[1]
    assert quadratic is not None and quadratic[0] == 100.0
    assert quadratic[1] == pytest.approx(2.0)
    # Sizes that are not powers of ten: 32 -> 100 clients, a value tripled.
    step = common.growth([(32, 1.0), (100, 3.125)])[1]
    assert step is not None and step[1] == pytest.approx(1.0)


def test_growth_has_no_step_where_a_value_is_not_positive() -> None:
    assert common.growth([(1, 0.0), (10, 3.0), (100, 3.0)])[1:] == [None, (1.0, 0.0)]
    assert common.growth([(1, 1.0)]) == [None]
    assert common.growth_cell(None) == "-"
    assert common.growth_cell((10.0, 1.0)) == "10.00x (^1.00)"


def test_goal_rows_say_met_not_met_and_not_measured() -> None:
    rows = common.goal_rows([
        common.Goal("latency", 2.0, 3.5, unit="x"),
        common.Goal("throughput", 336.0, 5000, at_least=True, shown="336/s"),
        common.Goal("RSS", None, 40, unit=" MiB"),
        common.Goal("exactly at the limit", 1.5, 1.5, unit="x"),
    ])
    assert rows[:2] == ["| goal | measured | |", "|---|---:|---|"]
    assert rows[2] == "| latency <= 3.5x | 2.00x | met |"
    assert rows[3] == "| throughput >= 5000 | 336/s | **NOT met** |"
    assert rows[4] == "| RSS <= 40 MiB | - | not measured |"
    assert rows[5].endswith("| met |")


def test_sshd_groups_hold_at_most_16_addresses_and_interleave_neighbours() -> None:
    addresses = [f"a{i}" for i in range(40)]
    runs = common.sshd_groups(addresses, interleave=False)
    assert [len(g) for g in runs] == [16, 16, 8] and runs[0][:2] == ["a0", "a1"]
    dealt = common.sshd_groups(addresses, interleave=True)
    assert len(dealt) == 3 and max(len(g) for g in dealt) <= 16
    assert sorted(a for group in dealt for a in group) == sorted(addresses)
    # Neighbours in the config are served by different processes.
    owner = {a: i for i, group in enumerate(dealt) for a in group}
    assert all(owner[a] != owner[b] for a, b in itertools.pairwise(addresses))
    assert [len(g) for g in common.sshd_groups([f"x{i}" for i in range(1000)], True)] == \
        [16] * 55 + [15] * 8


def test_scaling_addresses_stay_clear_of_the_bed_and_fit_one_port() -> None:
    many = scaling_bench.addresses(1000)
    assert len(set(many)) == 1000
    assert many[0] == "127.0.10.1" and many[249] == "127.0.10.250" and many[250] == "127.0.11.1"
    assert all(a.startswith("127.0.") and not a.startswith(("127.0.0.", "127.0.1."))
               for a in many)


def test_growth_table_has_a_column_per_size_and_per_step() -> None:
    figures = [scaling_bench.ms_figure("best ms", [0.001, 0.001, 0.001], "flat"),
               scaling_bench.Figure("scan s", [1.0, 10.0, 100.0], ["1", "10", "100"],
                                    "linear")]
    table = scaling_bench.growth_table("hosts", [1, 10, 100], figures)
    assert table[0] == ("| figure | hosts=1 | hosts=10 | hosts=100 | growth 1->10 | "
                        "growth 10->100 | expected |")
    assert table[1] == "|---|---:|---:|---:|---:|---:|---|"
    assert table[2] == ("| best ms | 1.0 | 1.0 | 1.0 | 1.00x (^0.00) | 1.00x (^0.00) | flat |")
    assert table[3] == ("| scan s | 1 | 10 | 100 | 10.00x (^1.00) | 10.00x (^1.00) | linear |")
    assert scaling_bench.worst_exponent(figures, [1, 10, 100]) == ("scan s", 1.0)
    # A count (hosts measured) is shown but not judged as a cost.
    count = scaling_bench.Figure("hosts", [1.0, 100.0, 10000.0], ["1", "100", "10000"], "-",
                                 cost=False)
    assert scaling_bench.worst_exponent([*figures, count], [1, 10, 100]) == ("scan s", 1.0)


def test_daemon_bench_goals_of_a_run_that_measured_nothing_are_not_measured() -> None:
    args = argparse.Namespace(clients=32, burst=100, scan_hosts=200, big_stream_mib=1024)
    goals = daemon_bench.goals({}, args)
    assert len(goals) == 15
    assert all(goal.measured is None for goal in goals)
    assert all(row.endswith("| not measured |") for row in common.goal_rows(goals)[2:])


@pytest.mark.parametrize("script", ["daemon_bench.py", "scaling_bench.py"])
def test_the_benchmarks_explain_their_options_without_running(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--no-docs" in done.stdout and "--skip" in done.stdout
