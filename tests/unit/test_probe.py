"""distsvc.probe: the parser of probe output, and the real probe script run on this machine."""

from __future__ import annotations

import math
import os
import re
import subprocess

import pytest

import distsvc.probe
from distsvc.probe import Measurement, parse_output

GOOD = "distsvc-probe 1 load1=0.52 cpus=8 cpumax=max/100000 psi=1.20 memavail_kb=123456"


# --- parse_output ----------------------------------------------------------------------------


def test_parses_the_builtin_format():
    assert parse_output(GOOD + "\n") == Measurement(
        load1=0.52, cpus=8, psi_some_avg10=1.2, mem_available_kb=123456)


def test_last_well_formed_line_wins():
    output = "\n".join([
        "distsvc-probe 1 load1=9.00 cpus=2 cpumax=- psi=5.0 memavail_kb=1",
        "distsvc-probe 1 load1=0.25 cpus=4 cpumax=- psi=0.5 memavail_kb=2048",
    ])
    assert parse_output(output) == Measurement(
        load1=0.25, cpus=4, psi_some_avg10=0.5, mem_available_kb=2048)


def test_junk_before_and_after_is_ignored():
    output = "\n".join([
        "Welcome to Ubuntu 22.04 LTS",
        "You have new mail.",
        "bash: /home/u/.bashrc: line 3: conda: command not found",
        GOOD,
        "load1=abc cpus=4",
        "distsvc-probe 1 lo",
        "logout",
        "",
    ])
    assert parse_output(output) == Measurement(
        load1=0.52, cpus=8, psi_some_avg10=1.2, mem_available_kb=123456)


def test_partial_line_without_a_load_figure_does_not_win():
    assert parse_output(GOOD + "\ndistsvc-probe 1 load1=").load1 == 0.52


def test_crlf_line_endings_are_accepted():
    assert parse_output("motd\r\n" + GOOD + "\r\n").cpus == 8


def test_non_numeric_load_is_junk():
    assert parse_output("distsvc-probe 1 load1=abc cpus=4") is None


def test_bare_number_from_a_custom_probe_is_the_metric():
    assert parse_output("some banner\n  3.75 \ntrailing words\n") == Measurement(metric=3.75)


def test_bare_integer_and_exponent_metrics():
    assert parse_output("42") == Measurement(metric=42.0)
    assert parse_output("1.5e2") == Measurement(metric=150.0)


@pytest.mark.parametrize(("cpus", "cpumax", "expected"), [
    ("8", "200000/100000", 2),
    ("8", "150000/100000", 2),  # a partial CPU counts as one
    ("8", "50000/100000", 1),  # never below one
    ("2", "800000/100000", 2),  # the quota does not add CPUs
    ("8", "max/100000", 8),
    ("8", "-", 8),
    ("-", "300000/100000", 3),
    ("-", "-", None),
    ("0", "-", None),
])
def test_cpu_max_quota_caps_cpus(cpus, cpumax, expected):
    line = f"distsvc-probe 1 load1=1.0 cpus={cpus} cpumax={cpumax} psi=- memavail_kb=-"
    assert parse_output(line).cpus == expected


def test_missing_psi_and_memavail_are_none():
    m = parse_output("distsvc-probe 1 load1=0.10 cpus=4 cpumax=- psi=- memavail_kb=-")
    assert m == Measurement(load1=0.1, cpus=4, psi_some_avg10=None, mem_available_kb=None)


def test_absent_fields_are_none():
    assert parse_output("load1=2.5") == Measurement(load1=2.5)


@pytest.mark.parametrize("load", ["-1", "-0.5", "nan", "NaN", "inf", "-inf", "1e999", "0x10"])
def test_negative_nan_and_infinite_load_is_rejected(load):
    assert parse_output(f"distsvc-probe 1 load1={load} cpus=4") is None


@pytest.mark.parametrize("metric", ["-1", "-0.0001", "nan", "inf", "1e400"])
def test_negative_nan_and_infinite_metric_is_rejected(metric):
    assert parse_output(metric) is None


def test_rejected_last_line_falls_back_to_an_earlier_good_one():
    assert parse_output(GOOD + "\ndistsvc-probe 1 load1=-3 cpus=4\nnan\n").load1 == 0.52


@pytest.mark.parametrize("field", ["psi", "memavail_kb"])
@pytest.mark.parametrize("value", ["-5", "nan", "inf", "abc"])
def test_bad_optional_fields_become_none(field, value):
    m = parse_output(f"distsvc-probe 1 load1=1 cpus=2 {field}={value}")
    assert m == Measurement(load1=1.0, cpus=2)


@pytest.mark.parametrize("output", ["", "\n\n", "hello\nworld\n", "load1=abc",
                                    "distsvc-probe 1 load1=- cpus=4", "-2", "1 2"])
def test_no_valid_line_gives_none(output):
    assert parse_output(output) is None


# --- the real probe, run here ----------------------------------------------------------------


def run_probe(**extra_env: str) -> tuple[str, Measurement]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", **extra_env}
    result = subprocess.run(["/bin/sh", "-c", distsvc.probe.PROBE_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    measurement = parse_output(result.stdout)
    assert measurement is not None, result.stdout
    return result.stdout, measurement


def expected_cpus() -> int:
    cpus = len(os.sched_getaffinity(0))
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return min(cpus, max(1, math.ceil(int(quota) / int(period))))


def psi_readable() -> bool:
    try:
        with open("/proc/pressure/cpu") as f:
            return bool(re.search(r"^some avg10=[0-9.]+", f.read(), re.M))
    except OSError:
        return False


def mem_available_kb() -> int:
    with open("/proc/meminfo") as f:
        match = re.search(r"^MemAvailable:\s*(\d+) kB", f.read(), re.M)
    assert match, "no MemAvailable in /proc/meminfo"
    return int(match.group(1))


def test_real_probe_prints_one_line_in_the_documented_format():
    output, _ = run_probe()
    lines = output.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"distsvc-probe {distsvc.probe.PROBE_FORMAT_VERSION} load1=")


def test_real_probe_load_is_close_to_getloadavg():
    _, m = run_probe()
    assert m.load1 is not None
    assert abs(m.load1 - os.getloadavg()[0]) <= 1.0


def test_real_probe_counts_usable_cpus():
    _, m = run_probe()
    assert m.cpus == expected_cpus()


def test_real_probe_memory_available_matches_proc_meminfo():
    _, m = run_probe()
    here = mem_available_kb()
    assert m.mem_available_kb is not None
    assert abs(m.mem_available_kb - here) <= 0.2 * here


def test_real_probe_reports_psi_iff_proc_pressure_is_readable():
    _, m = run_probe()
    if psi_readable():
        assert m.psi_some_avg10 is not None and m.psi_some_avg10 >= 0
    else:
        assert m.psi_some_avg10 is None


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs at least 2 usable CPUs")
def test_real_probe_cpus_ignore_omp_num_threads():
    _, m = run_probe(OMP_NUM_THREADS="1")
    assert m.cpus == expected_cpus()


@pytest.mark.parametrize(("cpulist", "cpus", "expected"), [
    ("0-7", "-", 8),
    ("0-3,8,10-11", "-", 7),
    ("5", "-", 1),
    ("0-1", "8", 2),  # the affinity list wins over a count
    ("3-1", "4", 4),  # a malformed list is ignored
    ("x", "4", 4),
    ("-", "4", 4),
])
def test_cpu_list_counts_the_allowed_cpus(cpulist, cpus, expected):
    line = f"distsvc-probe 1 load1=1.0 cpus={cpus} cpulist={cpulist} cpumax=- psi=- memavail_kb=-"
    assert parse_output(line).cpus == expected


def test_cpu_list_is_capped_by_the_quota_too():
    line = "distsvc-probe 1 load1=1.0 cpus=- cpulist=0-7 cpumax=200000/100000 psi=- memavail_kb=-"
    assert parse_output(line).cpus == 2


def test_real_probe_starts_no_program():
    """Only shell builtins: with no program to be found, every figure is still there."""
    _, everything = run_probe()
    _, builtins_only = run_probe(PATH="/nonexistent")
    assert builtins_only.cpus == everything.cpus
    assert builtins_only.mem_available_kb is not None
    assert builtins_only.load1 is not None


def test_real_probe_counts_the_cpus_of_its_own_affinity():
    """As nproc does: a shell restricted to one CPU reports one."""
    cpu = sorted(os.sched_getaffinity(0))[0]
    result = subprocess.run(["/bin/sh", "-c", distsvc.probe.PROBE_SCRIPT],
                            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
                            capture_output=True, text=True, timeout=30)
    assert result.stderr == ""
    measurement = parse_output(result.stdout)
    assert measurement is not None and measurement.cpus == 1


@pytest.mark.parametrize("shell", ["/bin/dash", "/bin/bash"])
def test_real_probe_runs_in_dash_and_bash(shell):
    result = subprocess.run([shell, "-c", distsvc.probe.PROBE_SCRIPT], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == ""
    measurement = parse_output(result.stdout)
    assert measurement is not None and measurement.cpus == expected_cpus()
