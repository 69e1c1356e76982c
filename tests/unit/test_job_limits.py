"""distsvc.jobs.limits: the syntax of every limit, its refusals, and what systemd is told."""

from __future__ import annotations

import pytest

import distsvc.errors
from distsvc.jobs import limits
from distsvc.jobs.limits import LimitError, Limits

# --- parse: accepted values ---------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("512M", 512 << 20), ("1G", 1 << 30), ("1g", 1 << 30), ("2T", 2 << 40),
    ("1048576", 1 << 20), ("1024K", 1 << 20), ("1.5G", 3 << 29), (" 64M ", 64 << 20),
])
def test_memory_sizes_are_base_1024_with_an_optional_unit(text, value):
    assert limits.parse("memory", text) == value


@pytest.mark.parametrize(("text", "value"), [("150%", 150), ("1%", 1), ("200%", 200)])
def test_cpu_is_a_percentage_of_one_cpu(text, value):
    assert limits.parse("cpu", text, cpus=2) == value


@pytest.mark.parametrize(("text", "value"), [
    ("10m", 600.0), ("30", 30.0), ("1.5", 1.5), ("2h", 7200.0), ("1d", 86400.0),
    ("1h30m", 5400.0), ("45s", 45.0), ("0.5s", 0.5),
])
def test_timeout_takes_seconds_or_units(text, value):
    assert limits.parse("timeout", text) == value


def test_tasks_io_weight_and_bandwidth():
    assert limits.parse("tasks", "64") == 64
    assert limits.parse("io_weight", "10000") == 10000
    assert limits.parse("io_weight", "1") == 1
    assert limits.parse("io_read", "10M") == 10 << 20
    assert limits.parse("io_write", "10M/s") == 10 << 20
    assert limits.parse("io_write", "1") == 1


def test_option_spelling_names_the_same_field():
    assert limits.parse("--io-read", "1K") == limits.parse("io_read", "1K") == 1024


def test_unknown_limit_name_is_a_programming_error():
    with pytest.raises(ValueError):
        limits.parse("colour", "red")


# --- parse: refusals, one line naming the option ------------------------------------------


def test_bad_memory_says_what_to_write():
    with pytest.raises(LimitError) as caught:
        limits.parse("memory", "5X")
    assert str(caught.value) == (
        "--memory 5X: not a size (use a number with K, M, G or T, e.g. 512M)")
    assert caught.value.exit_status == distsvc.errors.EXIT_USAGE
    assert isinstance(caught.value, distsvc.errors.DistsvcError)


@pytest.mark.parametrize(("name", "text", "message"), [
    ("memory", "512K", "--memory 512K: too small (at least 1M)"),
    ("memory", "1.5", "--memory 1.5: not a size (use a number with K, M, G or T, e.g. 512M)"),
    ("memory", "10M/s", "--memory 10M/s: not a size (use a number with K, M, G or T, e.g. 512M)"),
    ("memory", "-1G", "--memory -1G: not a size (use a number with K, M, G or T, e.g. 512M)"),
    ("memory", "99999999T", "--memory 99999999T: too large (at most 1048576T)"),
    ("memory", "", "--memory : not a size (use a number with K, M, G or T, e.g. 512M)"),
    ("cpu", "150", "--cpu 150: not a percentage (use N% of one CPU, e.g. 150%)"),
    ("cpu", "1.5%", "--cpu 1.5%: not a percentage (use N% of one CPU, e.g. 150%)"),
    ("cpu", "0%", "--cpu 0%: out of range (use 1% to 200%: this machine has 2 CPUs)"),
    ("cpu", "201%", "--cpu 201%: out of range (use 1% to 200%: this machine has 2 CPUs)"),
    ("tasks", "0", "--tasks 0: out of range (use 1 to 4194304)"),
    ("tasks", "many", "--tasks many: not a whole number (use 1 to 4194304)"),
    ("io_weight", "10001", "--io-weight 10001: out of range (use 1 to 10000)"),
    ("io_weight", "0", "--io-weight 0: out of range (use 1 to 10000)"),
    ("io_read", "0", "--io-read 0: too small (at least 1)"),
    ("io_read", "fast", "--io-read fast: not a size "
                        "(use a number with K, M, G or T, e.g. 512M/s)"),
    ("timeout", "0", "--timeout 0: too short (more than 0 seconds)"),
    ("timeout", "0s", "--timeout 0s: too short (more than 0 seconds)"),
    ("timeout", "10x", "--timeout 10x: not a duration "
                       "(use seconds or a number with s, m, h or d, e.g. 10m)"),
    ("timeout", "m", "--timeout m: not a duration "
                     "(use seconds or a number with s, m, h or d, e.g. 10m)"),
    ("timeout", "inf", "--timeout inf: not a duration "
                       "(use seconds or a number with s, m, h or d, e.g. 10m)"),
    ("timeout", "3651d", "--timeout 3651d: too long (at most 3650d)"),
])
def test_bad_values_are_refused_with_one_line(name, text, message):
    with pytest.raises(LimitError) as caught:
        limits.parse(name, text, cpus=2)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_a_value_with_a_newline_stays_on_one_line():
    with pytest.raises(LimitError) as caught:
        limits.parse("memory", "5\nX")
    assert str(caught.value) == (
        '--memory "5\\nX": not a size (use a number with K, M, G or T, e.g. 512M)')


def test_cpu_bound_follows_the_cpu_count():
    assert limits.parse("cpu", "800%", cpus=8) == 800
    with pytest.raises(LimitError, match=r"1 CPU\)$"):
        limits.parse("cpu", "101%", cpus=1)


def test_cpu_bound_defaults_to_this_machine(monkeypatch):
    monkeypatch.setattr(limits.os, "cpu_count", lambda: 3)
    assert limits.parse("cpu", "300%") == 300
    with pytest.raises(LimitError):
        limits.parse("cpu", "301%")


def test_parse_all_builds_limits_and_skips_unset_options():
    got = limits.parse_all({"--memory": "1G", "cpu": "50%", "tasks": None, "timeout": "1m"},
                           cpus=1)
    assert got == Limits(memory=1 << 30, cpu=50, timeout=60.0)


def test_parse_all_raises_the_first_bad_one():
    with pytest.raises(LimitError, match=r"^--tasks x:"):
        limits.parse_all({"tasks": "x", "memory": "1G"})


# --- merge, properties, controllers --------------------------------------------------------


def test_merge_asked_wins_field_by_field():
    defaults = Limits(memory=1 << 30, cpu=100, timeout=60.0)
    asked = Limits(memory=2 << 30, tasks=10)
    assert limits.merge(defaults, asked) == Limits(memory=2 << 30, cpu=100, tasks=10,
                                                   timeout=60.0)
    assert limits.merge(Limits(), Limits()) == Limits()
    assert limits.is_empty(Limits()) and not limits.is_empty(Limits(tasks=1))


def test_properties_use_systemds_names_and_units():
    every = Limits(memory=512 << 20, cpu=150, tasks=64, io_weight=50, io_read=10 << 20,
                   io_write=1 << 20, timeout=600.0)
    assert limits.properties(every, "/home/u/work") == {
        "MemoryMax": 512 << 20,
        "CPUQuotaPerSecUSec": 1_500_000,
        "TasksMax": 64,
        "IOWeight": 50,
        "IOReadBandwidthMax": [("/home/u/work", 10 << 20)],
        "IOWriteBandwidthMax": [("/home/u/work", 1 << 20)],
        "RuntimeMaxUSec": 600_000_000,
    }
    assert limits.properties(Limits(), "/") == {}
    assert limits.properties(Limits(timeout=0.5), "/") == {"RuntimeMaxUSec": 500_000}


def test_controllers_each_limit_needs():
    every = Limits(memory=1 << 20, cpu=1, tasks=1, io_weight=1, io_read=1, io_write=1,
                   timeout=1.0)
    assert limits.controllers(every) == {
        "memory": "memory", "cpu": "cpu", "tasks": "pids", "io_weight": "io",
        "io_read": "io", "io_write": "io"}
    assert limits.controllers(Limits(timeout=5.0)) == {}


# --- describe, formatting, JSON --------------------------------------------------------------


def test_describe_for_people():
    every = Limits(memory=512 << 20, cpu=150, tasks=64, io_weight=100, io_read=10 << 20,
                   io_write=1536 << 10, timeout=600.0)
    assert limits.describe(every) == {
        "memory": "512M", "cpu": "150%", "tasks": "64", "io_weight": "100",
        "io_read": "10M/s", "io_write": "1536K/s", "timeout": "10m"}
    assert limits.describe(Limits()) == {}


@pytest.mark.parametrize(("value", "shown"), [
    (1 << 30, "1G"), (3 << 29, "1536M"), (1000, "1000"), (1 << 40, "1T"), (2048, "2K")])
def test_format_size_is_exact(value, shown):
    assert limits.format_size(value) == shown


@pytest.mark.parametrize(("seconds", "shown"), [
    (600.0, "10m"), (90.0, "1m30s"), (1.5, "1.5s"), (86400.0, "1d"), (90061.0, "1d1h1m1s"),
    (30.0, "30s"), (3600.25, "1h0.25s")])
def test_format_duration_reads_back(seconds, shown):
    assert limits.format_duration(seconds) == shown
    assert limits.parse("timeout", shown) == seconds


def test_described_limits_parse_back_to_the_same():
    every = Limits(memory=(1 << 30) + 4096, cpu=250, tasks=7, io_weight=9, io_read=12345,
                   io_write=5 << 20, timeout=3725.5)
    texts = limits.describe(every)
    assert limits.parse_all(texts, cpus=4) == every


def test_json_round_trip():
    every = Limits(memory=1 << 20, cpu=100, tasks=3, io_weight=2, io_read=4, io_write=5,
                   timeout=6.5)
    assert limits.to_json(every) == {"memory": 1 << 20, "cpu": 100, "tasks": 3, "io_weight": 2,
                                     "io_read": 4, "io_write": 5, "timeout": 6.5}
    assert limits.from_json(limits.to_json(every)) == every
    assert limits.from_json({}) == Limits()
    assert limits.from_json({"timeout": 60}) == Limits(timeout=60.0)


@pytest.mark.parametrize("bad", [
    [], {"memory": "1G"}, {"memory": True}, {"cpu": 1.5}, {"tasks": -1}, {"colour": 1},
    {"timeout": 0}])
def test_from_json_refuses_anything_else(bad):
    with pytest.raises(ValueError):
        limits.from_json(bad)
