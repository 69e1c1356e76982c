"""bench/remote_jobs_bench.py's checks of the queue: its "no host ran more than its slots"
and "a freed slot waited this long" rest on these two functions, so they are tested here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import remote_jobs_bench as bench  # noqa: E402  (lives in bench/, hence the path above)


def test_most_at_once_counts_overlaps_and_not_a_handover() -> None:
    assert bench.most_at_once([]) == 0
    assert bench.most_at_once([(0.0, 1.0), (0.5, 1.5), (0.7, 0.8)]) == 3
    # One ends at the instant the next starts: a slot handed over, never 2 at once.
    assert bench.most_at_once([(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]) == 1
    assert bench.most_at_once([(0.0, 1.0), (0.0, 1.0), (1.0, 2.0), (1.0, 2.0)]) == 2


def test_slot_gaps_measure_each_start_after_the_first_slots_from_the_last_end() -> None:
    # 2 slots: the first two starts have no freed slot to wait for; the third starts 0.25 s
    # after the first end, the fourth 0.5 s after the second.
    spans = {"h1": [(0.0, 1.0), (0.0, 1.5), (1.25, 2.0), (2.0, 3.0)]}
    assert bench.slot_gaps(spans) == [0.25, 0.5]
    assert bench.slot_gaps({"h1": [(0.0, 1.0)]}) == []


def test_the_bench_explains_its_options_without_running() -> None:
    done = subprocess.run([sys.executable, str(BENCH / "remote_jobs_bench.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--jobs" in done.stdout and "--follow-mib" in done.stdout
