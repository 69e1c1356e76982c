"""distsvc.config: the TOML file, DISTSVC_HOSTS, and validation that reports every problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import distsvc.config
import distsvc.errors
from distsvc.config import DEFAULT_ENV_DENY, Config, EnvFilter, Host, JobsConfig
from distsvc.jobs.limits import Limits

DISTSVC = Path(sys.executable).parent / "distsvc"

FULL_TOML = """\
probe_timeout = 1.5
connect_timeout = 3
max_age = 10
host_key_policy = "accept-new"

[env]
allow = ["LANG", "LC_*", "MY_*"]
deny = ["MY_SECRET*"]

[[hosts]]
name = "alpha"
address = "10.0.0.1"
port = 2222
user = "bob"
slots = 4
probe = "cat /tmp/load"

[[hosts]]
name = "beta"
"""

FILE_HOSTS = {
    "hosts": [
        {"name": "alpha", "address": "10.0.0.1", "port": 2222, "user": "bob", "slots": 4,
         "probe": "cat /tmp/load"},
        {"name": "beta", "slots": 2},
    ],
}


def problems_of(data: dict, hosts_env: str | None = None) -> list[str]:
    with pytest.raises(distsvc.errors.ConfigError) as caught:
        distsvc.config.from_mapping(data, "test.toml", hosts_env)
    return caught.value.problems


def hosts_from_env(hosts_env: str, data: dict | None = None) -> tuple[Host, ...]:
    return distsvc.config.from_mapping(data or {}, "test.toml", hosts_env).hosts


# --- from_mapping: valid input and defaults -------------------------------------------------


def test_full_valid_config_is_read_field_by_field():
    config = distsvc.config.from_mapping(tomllib.loads(FULL_TOML), "full.toml", None)
    assert config == Config(
        source="full.toml",
        hosts=(
            Host(name="alpha", address="10.0.0.1", port=2222, user="bob", slots=4,
                 probe="cat /tmp/load"),
            Host(name="beta"),
        ),
        probe_timeout=1.5,
        connect_timeout=3.0,
        max_age=10.0,
        host_key_policy="accept-new",
        env=EnvFilter(allow=("LANG", "LC_*", "MY_*"), deny=(*DEFAULT_ENV_DENY, "MY_SECRET*")),
    )


def test_integer_timeouts_become_floats():
    config = distsvc.config.from_mapping({"probe_timeout": 3, "max_age": 60}, "s", None)
    assert isinstance(config.probe_timeout, float) and config.probe_timeout == 3.0
    assert isinstance(config.max_age, float) and config.max_age == 60.0


def test_empty_mapping_gives_all_defaults():
    config = distsvc.config.from_mapping({}, "empty.toml", None)
    assert config == Config(source="empty.toml")
    assert config.hosts == ()
    assert config.probe_timeout == 2.0
    assert config.connect_timeout == 5.0
    assert config.max_age == 30.0
    assert config.host_key_policy == "strict"
    assert config.env.allow == ("*",)
    assert config.env.deny == DEFAULT_ENV_DENY


def test_user_deny_patterns_are_added_to_the_default_deny_list():
    config = distsvc.config.from_mapping({"env": {"deny": ["AWS_*"]}}, "s", None)
    assert config.env.deny == (*DEFAULT_ENV_DENY, "AWS_*")
    assert config.env.allow == ("*",)


def test_default_deny_list_covers_session_variables():
    for name in ("HOME", "SSH_*", "DISPLAY", "TERM", "XDG_RUNTIME_DIR", "DISTSVC_HOSTS"):
        assert name in DEFAULT_ENV_DENY


# --- DISTSVC_HOSTS ---------------------------------------------------------------------------


@pytest.mark.parametrize("hosts_env", ["a;b;c", "a,b,c", "a;b,c", "a,b;c"])
def test_distsvc_hosts_accepts_semicolons_and_commas(hosts_env):
    assert [h.name for h in hosts_from_env(hosts_env)] == ["a", "b", "c"]


def test_distsvc_hosts_trims_whitespace_around_entries():
    assert [h.name for h in hosts_from_env("  a ;\tb  ,  c\n")] == ["a", "b", "c"]


def test_distsvc_hosts_ignores_empty_entries():
    assert [h.name for h in hosts_from_env(";;a,, ;b;,")] == ["a", "b"]


def test_distsvc_hosts_user_host_port():
    (host,) = hosts_from_env("alice@build1.example.org:2200")
    assert host == Host(name="build1.example.org", user="alice", port=2200)


def test_distsvc_hosts_plain_name_has_no_user_or_port():
    (host,) = hosts_from_env("box")
    assert host == Host(name="box")


def test_distsvc_hosts_bracketed_ipv6_with_port():
    (host,) = hosts_from_env("[::1]:22")
    assert host == Host(name="::1", port=22)


def test_distsvc_hosts_bracketed_ipv6_with_user_and_no_port():
    (host,) = hosts_from_env("root@[fe80::1]")
    assert host == Host(name="fe80::1", user="root")


def test_distsvc_hosts_replaces_the_file_list_and_known_names_keep_settings():
    hosts = hosts_from_env("gamma;alpha", FILE_HOSTS)
    assert hosts == (
        Host(name="gamma"),
        Host(name="alpha", address="10.0.0.1", port=2222, user="bob", slots=4,
             probe="cat /tmp/load"),
    )


def test_distsvc_hosts_user_and_port_override_the_file_for_a_known_name():
    (host,) = hosts_from_env("eve@alpha:2200", FILE_HOSTS)
    assert host == Host(name="alpha", address="10.0.0.1", port=2200, user="eve", slots=4,
                        probe="cat /tmp/load")


@pytest.mark.parametrize("hosts_env", [None, "", "   "])
def test_unset_or_blank_distsvc_hosts_keeps_the_file_list(hosts_env):
    hosts = distsvc.config.from_mapping(FILE_HOSTS, "s", hosts_env).hosts
    assert [h.name for h in hosts] == ["alpha", "beta"]


@pytest.mark.parametrize("spec", ["bad host", "a@b@c", "h:port", "u@"])
def test_malformed_distsvc_hosts_entry_is_a_problem_naming_it(spec):
    problems = problems_of({}, f"good;{spec}")
    assert problems == [f"DISTSVC_HOSTS: {json.dumps(spec)} is not [user@]host[:port] "
                        "(hosts are separated by ',' or ';')"]


@pytest.mark.parametrize("spec", ["h:0", "h:65536"])
def test_distsvc_hosts_port_out_of_range_says_so(spec):
    problems = problems_of({}, f"good;{spec}")
    assert problems == [f"DISTSVC_HOSTS: {json.dumps(spec)}: port {spec[2:]} is not in "
                        "1-65535"]


@pytest.mark.parametrize("hosts_env", [";", " , ;"])
def test_a_distsvc_hosts_of_separators_alone_is_a_problem_not_an_empty_list(hosts_env):
    assert problems_of({}, hosts_env) == [
        f"DISTSVC_HOSTS: {json.dumps(hosts_env)} names no host (name hosts separated by ',' "
        "or ';', or unset it to use the file's)"]


def test_a_bad_distsvc_hosts_is_blamed_on_the_variable_not_the_file():
    """The file need not exist; a problem in it is still said as the file's."""
    with pytest.raises(distsvc.errors.ConfigError) as caught:
        distsvc.config.from_mapping({}, "/home/u/.config/distsvc/config.toml", "a b")
    assert caught.value.message == ('DISTSVC_HOSTS: "a b" is not [user@]host[:port] '
                                    "(hosts are separated by ',' or ';')")
    with pytest.raises(distsvc.errors.ConfigError) as caught:
        distsvc.config.from_mapping({"max_age": "x"}, "cfg.toml", "h:0")
    assert caught.value.message == ('DISTSVC_HOSTS: "h:0": port 0 is not in 1-65535; '
                                    "invalid configuration in cfg.toml: max_age: must be a "
                                    "number")


def test_parse_host_spec_rejects_out_of_range_port():
    assert distsvc.config.parse_host_spec("h:65535") == Host(name="h", port=65535)
    assert distsvc.config.parse_host_spec("h:65536") is None


# --- validation: every problem, with its path -----------------------------------------------


def test_every_problem_is_collected_in_one_config_error():
    data = {
        "bogus": 1,
        "probe_timeout": -1,
        "connect_timeout": "fast",
        "host_key_policy": "lax",
        "env": {"allow": "X*", "deny": ["ok", ""], "other": True},
        "hosts": [
            {"name": "a"},
            {"name": "b"},
            {"name": "c", "port": "22"},
            {"port": 22},
            {"name": "a"},
            {"name": "d", "colour": "red", "slots": 0},
        ],
    }
    with pytest.raises(distsvc.errors.ConfigError) as caught:
        distsvc.config.from_mapping(data, "cfg.toml", None)
    error = caught.value
    assert set(error.problems) == {
        "bogus: unknown setting",
        "probe_timeout: must be greater than 0",
        "connect_timeout: must be a number",
        "host_key_policy: must be one of strict, accept-new",
        "env.allow: must be a list of non-empty strings (glob patterns)",
        "env.deny: must be a list of non-empty strings (glob patterns)",
        "env.other: unknown setting",
        "hosts[2].port: must be an integer",
        "hosts[3].name: is required",
        "hosts[4].name: duplicate host 'a'",
        "hosts[5].colour: unknown setting",
        "hosts[5].slots: must be between 1 and 100000",
    }
    assert len(error.problems) == 12
    assert error.source == "cfg.toml"
    assert error.exit_status == distsvc.errors.EXIT_USAGE == 2
    assert error.message == "invalid configuration in cfg.toml: " + "; ".join(error.problems)


def test_port_must_be_an_integer():
    assert problems_of({"hosts": [{"name": "a"}, {"name": "b"}, {"name": "c", "port": "x"}]}) \
        == ["hosts[2].port: must be an integer"]


def test_boolean_port_is_not_an_integer():
    assert problems_of({"hosts": [{"name": "a", "port": True}]}) == [
        "hosts[0].port: must be an integer"]


def test_port_out_of_range():
    assert problems_of({"hosts": [{"name": "a", "port": 70000}]}) == [
        "hosts[0].port: must be between 1 and 65535"]


def test_host_name_is_required():
    assert problems_of({"hosts": [{"address": "10.0.0.1"}]}) == ["hosts[0].name: is required"]


def test_empty_host_name_must_be_non_empty():
    assert problems_of({"hosts": [{"name": "  "}]}) == [
        "hosts[0].name: must be a non-empty string"]


def test_unknown_top_level_and_host_keys_are_reported():
    assert problems_of({"hostz": [], "hosts": [{"name": "a", "adress": "x"}]}) == [
        "hostz: unknown setting", "hosts[0].adress: unknown setting"]


def test_bad_host_key_policy():
    assert problems_of({"host_key_policy": "yes"}) == [
        "host_key_policy: must be one of strict, accept-new"]


@pytest.mark.parametrize("patterns", ["LANG", ["LANG", 3], ["LANG", ""], {"a": "b"}])
def test_bad_env_patterns(patterns):
    assert problems_of({"env": {"allow": patterns}}) == [
        "env.allow: must be a list of non-empty strings (glob patterns)"]


def test_env_must_be_a_table():
    assert problems_of({"env": ["x"]}) == ["env: must be a table"]


def test_duplicate_host_names():
    assert problems_of({"hosts": [{"name": "x"}, {"name": "y"}, {"name": "x"}]}) == [
        "hosts[2].name: duplicate host 'x'"]


def test_duplicate_host_path_counts_entries_that_are_not_tables():
    problems = problems_of({"hosts": ["oops", {"name": "a"}, {"name": "a"}]})
    assert "hosts[2].name: duplicate host 'a'" in problems


def test_hosts_must_be_an_array_of_tables():
    assert problems_of({"hosts": {"name": "a"}}) == [
        "hosts: must be an array of tables ([[hosts]])"]
    assert problems_of({"hosts": ["a"]}) == ["hosts[0]: must be a table with at least `name`"]


@pytest.mark.parametrize("value", [0, -1.5, True, "2"])
def test_timeouts_must_be_positive_numbers(value):
    (problem,) = problems_of({"max_age": value})
    assert problem.startswith("max_age: must be ")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_timeout_is_rejected(value):
    assert problems_of({"probe_timeout": value}) == ["probe_timeout: must be a number"]


# --- load(): files -------------------------------------------------------------------------


def test_load_reads_the_given_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(FULL_TOML)
    config = distsvc.config.load(path, {})
    assert config.source == str(path)
    assert [h.name for h in config.hosts] == ["alpha", "beta"]


def test_load_takes_distsvc_hosts_from_the_environment_mapping(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(FULL_TOML)
    config = distsvc.config.load(path, {"DISTSVC_HOSTS": "u@alpha, new:23"})
    assert config.hosts == (
        Host(name="alpha", address="10.0.0.1", port=2222, user="u", slots=4,
             probe="cat /tmp/load"),
        Host(name="new", port=23),
    )


def test_toml_syntax_error_is_a_config_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("probe_timeout = = 3\n")
    with pytest.raises(distsvc.errors.ConfigError) as caught:
        distsvc.config.load(path, {})
    assert caught.value.source == str(path)
    (problem,) = caught.value.problems
    assert problem.startswith("not valid TOML: ")
    assert "\n" not in caught.value.message


def test_problems_in_a_file_are_reported_with_the_file_as_source(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[[hosts]]\nname = "a"\nport = "22"\n')
    with pytest.raises(distsvc.errors.ConfigError) as caught:
        distsvc.config.load(path, {})
    assert caught.value.message == f"invalid configuration in {path}: hosts[0].port: must be " \
        "an integer"


def test_explicit_missing_config_file_is_an_error(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(distsvc.errors.ConfigError) as caught:
        distsvc.config.load(path, {"XDG_CONFIG_HOME": str(tmp_path)})
    assert caught.value.problems == ["file not found"]
    assert caught.value.source == str(path)


def test_missing_default_config_file_is_an_empty_config(tmp_path):
    environ = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    config = distsvc.config.load(None, environ)
    assert config == Config(source=str(tmp_path / "xdg" / "distsvc" / "config.toml"))


def test_default_config_file_is_read_from_xdg_config_home(tmp_path):
    path = tmp_path / "xdg" / "distsvc" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text('[[hosts]]\nname = "h1"\n')
    config = distsvc.config.load(None, {"HOME": str(tmp_path / "home"),
                                        "XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert config.hosts == (Host(name="h1"),)
    assert config.source == str(path)


@pytest.mark.parametrize("xdg", [None, "", "relative/dir"])
def test_default_config_file_falls_back_to_home_dot_config(tmp_path, xdg):
    path = tmp_path / ".config" / "distsvc" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text('[[hosts]]\nname = "h2"\n')
    environ = {"HOME": str(tmp_path)}
    if xdg is not None:
        environ["XDG_CONFIG_HOME"] = xdg
    assert distsvc.config.load(None, environ).hosts == (Host(name="h2"),)


def test_unreadable_config_path_is_a_config_error(tmp_path):
    with pytest.raises(distsvc.errors.ConfigError) as caught:
        distsvc.config.load(tmp_path, {})  # a directory
    assert caught.value.source == str(tmp_path)
    assert len(caught.value.problems) == 1


def test_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(b"name = \"\xff\xfe\"\n")
    with pytest.raises(distsvc.errors.ConfigError):
        distsvc.config.load(path, {})


# --- [jobs] --------------------------------------------------------------------------------

JOBS_TOML = """\
[jobs]
memory = "1.5G"
cpu = "150%"
tasks = 64
io_weight = 200
timeout = "90m"
isolate = ["pid"]
keep = 5
max_age = "7d"
max_output = "10M"

[jobs.all]
memory = "8G"
cpu = "400%"
tasks = 1000
"""


def test_jobs_defaults():
    jobs = distsvc.config.from_mapping({}, "s", None).jobs
    assert jobs == JobsConfig()
    assert jobs.defaults == Limits() and jobs.all == Limits()
    assert jobs.isolate == ("pid", "mount", "network")
    assert (jobs.keep, jobs.max_age, jobs.max_output) == (100, 30 * 86400.0, 1 << 30)


def test_jobs_table_is_read_with_the_options_syntax():
    jobs = distsvc.config.from_mapping(tomllib.loads(JOBS_TOML), "s", None).jobs
    assert jobs == JobsConfig(
        defaults=Limits(memory=3 << 29, cpu=150, tasks=64, io_weight=200, timeout=5400.0),
        isolate=("pid",), keep=5, max_age=7 * 86400.0, max_output=10 << 20,
        all=Limits(memory=8 << 30, cpu=400, tasks=1000))


def test_jobs_limits_may_be_plain_numbers():
    jobs = distsvc.config.from_mapping(
        {"jobs": {"memory": 1 << 30, "timeout": 90, "max_age": 3600, "max_output": 0,
                  "keep": 0, "isolate": []}}, "s", None).jobs
    assert jobs.defaults == Limits(memory=1 << 30, timeout=90.0)
    assert (jobs.max_age, jobs.max_output, jobs.keep, jobs.isolate) == (3600.0, 0, 0, ())
    assert distsvc.config.from_mapping(
        {"jobs": {"timeout": 1.5}}, "s", None).jobs.defaults.timeout == 1.5
    assert distsvc.config.from_mapping(
        {"jobs": {"timeout": 1e6}}, "s", None).jobs.defaults.timeout == 1e6


def test_a_cpu_default_is_not_bound_by_this_machines_cpus():
    jobs = distsvc.config.from_mapping({"jobs": {"cpu": "6400%"}}, "s", None).jobs
    assert jobs.defaults.cpu == 6400


@pytest.mark.parametrize(("jobs", "problem"), [
    ({"memory": "5X"}, "jobs.memory: 5X: not a size (use a number with K, M, G or T, e.g. 512M)"),
    ({"memory": "1K"}, "jobs.memory: 1K: too small (at least 1M)"),
    ({"memory": True}, 'jobs.memory: must be a string such as "512M", or a number'),
    ({"cpu": "150"}, "jobs.cpu: 150: not a percentage (use N% of one CPU, e.g. 150%)"),
    ({"tasks": 0}, "jobs.tasks: 0: out of range (use 1 to 4194304)"),
    ({"io_weight": "heavy"}, "jobs.io_weight: heavy: not a whole number (use 1 to 10000)"),
    ({"timeout": "0"}, "jobs.timeout: 0: too short (more than 0 seconds)"),
    ({"timeout": [1]}, 'jobs.timeout: must be a string such as "512M", or a number'),
    ({"io_read": "1M"}, "jobs.io_read: unknown setting"),
    ({"isolate": ["pid", "users"]}, "jobs.isolate: must be a list of distinct names from "
                                    "pid, mount, network (or [] for none)"),
    ({"isolate": ["pid", "pid"]}, "jobs.isolate: must be a list of distinct names"),
    ({"isolate": "pid"}, "jobs.isolate: must be a list"),
    ({"keep": -1}, "jobs.keep: must be between 0 and 1000000"),
    ({"keep": "5"}, "jobs.keep: must be an integer"),
    ({"max_age": "soon"}, "jobs.max_age: soon: not a duration"),
    ({"max_output": "lots"}, "jobs.max_output: lots: not a size"),
    ({"all": {"timeout": "1m"}}, "jobs.all.timeout: unknown setting"),
    ({"all": {"memory": "1"}}, "jobs.all.memory: 1: too small (at least 1M)"),
    ({"all": []}, "jobs.all: must be a table"),
    ({"colour": 1}, "jobs.colour: unknown setting"),
])
def test_bad_jobs_settings_are_problems_with_their_path(jobs, problem):
    (found,) = problems_of({"jobs": jobs})
    assert found.startswith(problem), found


def test_a_jobs_value_with_a_newline_is_reported_on_one_line():
    (problem,) = problems_of({"jobs": {"timeout": "1\nm"}})
    assert problem.startswith('jobs.timeout: "1\\nm": not a duration')


def test_jobs_must_be_a_table():
    assert problems_of({"jobs": 3}) == ["jobs: must be a table"]


def test_every_bad_jobs_setting_is_reported_at_once():
    problems = problems_of({"jobs": {"memory": "x", "cpu": "x", "keep": "x",
                                     "all": {"tasks": "x"}}})
    assert [p.split(":")[0] for p in problems] == [
        "jobs.keep", "jobs.memory", "jobs.cpu", "jobs.all.tasks"]


def test_jobs_settings_travel_to_the_daemon_unchanged():
    config = distsvc.config.from_mapping(tomllib.loads(JOBS_TOML), "s", None)
    wired = json.loads(json.dumps(distsvc.config.to_mapping(config)))
    assert distsvc.config.from_wire(wired).jobs == config.jobs
    default = distsvc.config.from_mapping({}, "s", None)
    assert distsvc.config.from_wire(distsvc.config.to_mapping(default)).jobs == JobsConfig()


def test_to_mapping_drops_unset_host_fields():
    config = distsvc.config.from_mapping(FILE_HOSTS, "s", None)
    data = distsvc.config.to_mapping(config)
    assert data["hosts"] == [
        {"name": "alpha", "address": "10.0.0.1", "port": 2222, "user": "bob", "slots": 4,
         "probe": "cat /tmp/load"},
        {"name": "beta", "slots": 2},
    ]
    assert data["env"] == {"allow": ["*"], "deny": list(DEFAULT_ENV_DENY)}


# --- the CLI: distsvc config check ----------------------------------------------------------


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "LANG": "C.UTF-8",
    }
    env.update(extra)
    return env


def config_check(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DISTSVC), "config", "check", *args], env=cli_env(tmp_path, **extra),
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)


BAD_TOML = """\
probe_timeout = "soon"
colour = "blue"
host_key_policy = "trusting"

[env]
allow = "LANG"

[[hosts]]
name = "a"

[[hosts]]
name = "a"

[[hosts]]
name = "c"
port = "ssh"

[[hosts]]
address = "10.1.1.1"
"""


def test_cli_config_check_reports_every_bad_field_on_one_line(tmp_path):
    bad = tmp_path / "BAD.toml"
    bad.write_text(BAD_TOML)
    result = config_check(tmp_path, "--config", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith(f"distsvc: invalid configuration in {bad}")
    for expected in (
        "probe_timeout: must be a number",
        "colour: unknown setting",
        "host_key_policy: must be one of strict, accept-new",
        "env.allow: must be a list of non-empty strings",
        "hosts[1].name: duplicate host 'a'",
        "hosts[2].port: must be an integer",
        "hosts[3].name: is required",
    ):
        assert expected in line


def test_cli_config_check_toml_syntax_error(tmp_path):
    bad = tmp_path / "BAD.toml"
    bad.write_text("[[hosts]\nname = 1\n")
    result = config_check(tmp_path, "--config", str(bad))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"distsvc: invalid configuration in {bad}: not valid TOML")


def test_cli_config_check_missing_explicit_file(tmp_path):
    result = config_check(tmp_path, "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"distsvc: invalid configuration in {tmp_path / 'missing.toml'}: file not found"]


def test_cli_config_check_error_stays_one_line_for_keys_with_newlines(tmp_path):
    bad = tmp_path / "BAD.toml"
    bad.write_text('"a\\nb" = 1\n')
    result = config_check(tmp_path, "--config", str(bad))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_cli_config_check_prints_the_effective_config(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(FULL_TOML)
    result = config_check(tmp_path, "--config", str(good))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"# effective configuration (from {good})\n")
    printed = tomllib.loads(result.stdout)
    assert printed == {
        "probe_timeout": 1.5,
        "connect_timeout": 3.0,
        "max_age": 10.0,
        "host_key_policy": "accept-new",
        "daemon_idle_exit": 600.0,
        "env": {"allow": ["LANG", "LC_*", "MY_*"], "deny": [*DEFAULT_ENV_DENY, "MY_SECRET*"]},
        "jobs": {"isolate": ["pid", "mount", "network"], "keep": 100, "max_age": "30d",
                 "max_output": "1G"},
        "hosts": [
            {"name": "alpha", "address": "10.0.0.1", "port": 2222, "user": "bob", "slots": 4,
             "probe": "cat /tmp/load"},
            {"name": "beta"},
        ],
    }


def test_cli_config_check_prints_jobs_settings_that_read_back_the_same(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(JOBS_TOML)
    result = config_check(tmp_path, "--config", str(good))
    assert result.returncode == 0, result.stderr
    printed = tomllib.loads(result.stdout)
    assert printed["jobs"] == {
        "memory": "1536M", "cpu": "150%", "tasks": 64, "io_weight": 200, "timeout": "1h30m",
        "isolate": ["pid"], "keep": 5, "max_age": "7d", "max_output": "10M",
        "all": {"memory": "8G", "cpu": "400%", "tasks": 1000}}
    again = distsvc.config.from_mapping(printed, "printed", None)
    assert again.jobs == distsvc.config.from_mapping(tomllib.loads(JOBS_TOML), "s", None).jobs


def test_cli_config_check_applies_distsvc_hosts_and_accept_new(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(FULL_TOML)
    result = config_check(tmp_path, "--config", str(good), "--accept-new",
                          DISTSVC_HOSTS="zed@beta:2022")
    assert result.returncode == 0, result.stderr
    printed = tomllib.loads(result.stdout)
    assert printed["hosts"] == [{"name": "beta", "user": "zed", "port": 2022}]
    assert printed["host_key_policy"] == "accept-new"


def test_cli_config_check_without_any_config_file(tmp_path):
    result = config_check(tmp_path)
    assert result.returncode == 0, result.stderr
    default = tmp_path / "xdg" / "distsvc" / "config.toml"
    assert result.stdout.startswith(f"# effective configuration (from {default})\n")
    assert "# no hosts: commands run on this machine" in result.stdout
    assert "hosts" not in tomllib.loads(result.stdout)
