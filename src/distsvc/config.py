"""Configuration: the TOML file, `DISTSVC_HOSTS`, validation with a path for every problem.

This module only reads and checks; it never connects anywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import distsvc.errors
import distsvc.paths
from distsvc.jobs import limits as job_limits

if sys.version_info >= (3, 11):  # noqa: UP036 - kept: tomli is the design's fallback
    import tomllib
else:  # pragma: no cover - the design's fallback; requires-python keeps it unused for now
    import tomli as tomllib

HOST_KEY_POLICIES = ("strict", "accept-new")
_T = TypeVar("_T")
_N = TypeVar("_N", "Host", "Cluster")

# Variables that describe this machine or this login session, not the user's work:
# carrying them to another host would make the command lie about where it runs.
DEFAULT_ENV_DENY = (
    "HOME", "USER", "LOGNAME", "SHELL", "PWD", "OLDPWD", "SHLVL", "HOSTNAME", "HOSTTYPE",
    "TERM", "TERMCAP", "COLUMNS", "LINES", "DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY",
    "SSH_*", "XDG_RUNTIME_DIR", "XDG_SESSION_*", "XDG_SEAT*", "XDG_VTNR",
    "DBUS_SESSION_BUS_ADDRESS", "MAIL", "_", "TMUX", "TMUX_PANE", "STY", "WINDOW",
    "GPG_AGENT_INFO", "KRB5CCNAME", "INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET",
    "LISTEN_*", "MANAGERPID", "SYSTEMD_EXEC_PID", "DISTSVC_HOSTS",
)


@dataclasses.dataclass(frozen=True)
class Host:
    """One SSH host. `name` labels it and is looked up in ~/.ssh/config like `ssh NAME`."""

    name: str
    address: str | None = None
    port: int | None = None
    user: str | None = None
    slots: int | None = None
    probe: str | None = None


CLUSTER_LIMITS = ("memory", "cpu", "timeout")
"""The limits a cluster may have a default for (the others have no Slurm counterpart: see
distsvc/slurm.py)."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A Slurm cluster: reached on this machine (Slurm's client commands here) when `login`
    is None, else through its login node over SSH (a `Host`, found in ~/.ssh/config like
    any). Work goes to `partition`, `account` and `qos` (Slurm's defaults when None) with
    `defaults` for the limits a command or job does not ask for itself. `output` is the
    directory on the cluster (shared with its nodes) that keeps jobs' output: relative to
    the home directory there unless absolute."""

    name: str
    login: Host | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    defaults: job_limits.Limits = dataclasses.field(default_factory=job_limits.Limits)
    output: str = ".local/state/distsvc/slurm"


@dataclasses.dataclass(frozen=True)
class EnvFilter:
    allow: tuple[str, ...] = ("*",)
    deny: tuple[str, ...] = DEFAULT_ENV_DENY


ISOLATIONS = ("pid", "mount", "network")
# Which limits may have a default in [jobs], and which may bound all jobs together in
# [jobs.all] (the slice: a timeout or a per-directory bandwidth means nothing there).
JOB_DEFAULT_LIMITS = ("memory", "cpu", "tasks", "io_weight", "timeout")
ALL_JOBS_LIMITS = ("memory", "cpu", "tasks", "io_weight")


@dataclasses.dataclass(frozen=True)
class JobsConfig:
    """`[jobs]`: defaults for each job's limits and isolation, retention, and `[jobs.all]`."""

    defaults: job_limits.Limits = dataclasses.field(default_factory=job_limits.Limits)
    isolate: tuple[str, ...] = ISOLATIONS
    keep: int = 100                      # finished jobs kept, newest first
    max_age: float = 30 * 86400.0        # seconds a finished job is kept
    max_output: int = 1 << 30            # bytes kept of each stream (the last ones)
    all: job_limits.Limits = dataclasses.field(default_factory=job_limits.Limits)
    slots: int | None = None             # jobs running at once, everywhere together
    groups: tuple[tuple[str, int], ...] = ()  # group name -> jobs of it running at once


@dataclasses.dataclass(frozen=True)
class Config:
    source: str
    hosts: tuple[Host, ...] = ()
    probe_timeout: float = 2.0
    connect_timeout: float = 5.0
    max_age: float = 30.0
    host_key_policy: str = "strict"
    env: EnvFilter = EnvFilter()
    daemon_idle_exit: float = 600.0
    jobs: JobsConfig = JobsConfig()
    clusters: tuple[Cluster, ...] = ()

    def cluster(self, name: str) -> Cluster | None:
        """The cluster called `name`, if one is configured."""
        return next((c for c in self.clusters if c.name == name), None)


_HOST_KEYS = {f.name for f in dataclasses.fields(Host)}
_TOP_KEYS = {"hosts", "probe_timeout", "connect_timeout", "max_age", "host_key_policy", "env",
             "daemon_idle_exit", "jobs", "clusters"}
_CLUSTER_KEYS = {"name", "login", "address", "port", "user", "partition", "account", "qos",
                 "output", *CLUSTER_LIMITS}
_NOT_FOR_CLUSTERS = {"tasks": "Slurm bounds no process count", "io_weight": "Slurm has no "
                     "I/O limits", "io_read": "Slurm has no I/O limits",
                     "io_write": "Slurm has no I/O limits"}
# Slurm's names for partitions, accounts and QOS: no spaces, quotes or option syntax.
_SLURM_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,128}")
_JOBS_KEYS = {*JOB_DEFAULT_LIMITS, "isolate", "keep", "max_age", "max_output", "all", "slots",
              "groups"}
_HOST_SPEC = re.compile(
    r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:@\s]+)(?::(?P<port>\d+))?$")


class _Checker:
    """Collects problems instead of stopping at the first, so the user fixes them in one go."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def unknown_keys(self, table: Mapping[str, Any], known: set[str], where: str) -> None:
        for key in sorted(set(table) - known):
            # Quoted TOML keys may hold anything, newlines included: keep the report one line.
            shown = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)
            self.problem(f"{where}{shown}", "unknown setting")

    def number(self, table: Mapping[str, Any], key: str, where: str, default: float,
               minimum: float = 0.0) -> float:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value):
            self.problem(f"{where}{key}", "must be a number")
            return default
        if value <= minimum:
            self.problem(f"{where}{key}", f"must be greater than {minimum:g}")
            return default
        return float(value)

    def string(self, table: Mapping[str, Any], key: str, where: str) -> str | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.problem(f"{where}{key}", "must be a non-empty string")
            return None
        return value

    def integer(self, table: Mapping[str, Any], key: str, where: str, lo: int,
                hi: int) -> int | None:
        value = table.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(f"{where}{key}", "must be an integer")
            return None
        if not lo <= value <= hi:
            self.problem(f"{where}{key}", f"must be between {lo} and {hi}")
            return None
        return value

    def patterns(self, table: Mapping[str, Any], key: str, where: str) -> tuple[str, ...] | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.problem(f"{where}{key}", "must be a list of non-empty strings (glob patterns)")
            return None
        return tuple(value)


def parse_host_spec(spec: str) -> Host | None:
    """`[user@]host[:port]` as written in DISTSVC_HOSTS; None if malformed."""
    match = _HOST_SPEC.match(spec)
    if not match:
        return None
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 1 <= port <= 65535:
        return None
    name = match["host"].strip("[]")
    return Host(name=name, user=match["user"], port=port)


def _spec_problem(spec: str) -> str:
    """Why parse_host_spec refused spec, in the words of DISTSVC_HOSTS's syntax."""
    match = _HOST_SPEC.match(spec)
    if match and match["port"]:
        return f"{json.dumps(spec)}: port {match['port']} is not in 1-65535"
    return (f"{json.dumps(spec)} is not [user@]host[:port] (hosts are separated by ',' "
            "or ';')")


def _check_host(check: _Checker, raw: Any, where: str) -> Host | None:
    if not isinstance(raw, dict):
        check.problem(where, "must be a table with at least `name`")
        return None
    check.unknown_keys(raw, _HOST_KEYS, f"{where}.")
    name = check.string(raw, "name", f"{where}.")
    if name is None and "name" not in raw:
        check.problem(f"{where}.name", "is required")
    return Host(
        name=name or "",
        address=check.string(raw, "address", f"{where}."),
        port=check.integer(raw, "port", f"{where}.", 1, 65535),
        user=check.string(raw, "user", f"{where}."),
        slots=check.integer(raw, "slots", f"{where}.", 1, 100_000),
        probe=check.string(raw, "probe", f"{where}."),
    )


def _check_cluster(check: _Checker, raw: Any, where: str) -> Cluster | None:
    if not isinstance(raw, dict):
        check.problem(where, "must be a table with at least `name`")
        return None
    for key, why in _NOT_FOR_CLUSTERS.items():
        if key in raw:
            check.problem(f"{where}.{key}", f"a cluster cannot have it: {why}")
    check.unknown_keys(raw, _CLUSTER_KEYS | set(_NOT_FOR_CLUSTERS), f"{where}.")
    name = check.string(raw, "name", f"{where}.")
    if name is None and "name" not in raw:
        check.problem(f"{where}.name", "is required")
    login_name = check.string(raw, "login", f"{where}.")
    login = None
    if login_name is not None:
        login = Host(name=login_name, address=check.string(raw, "address", f"{where}."),
                     port=check.integer(raw, "port", f"{where}.", 1, 65535),
                     user=check.string(raw, "user", f"{where}."))
    else:
        for key in ("address", "port", "user"):
            if key in raw:
                check.problem(f"{where}.{key}", "is for the login node: set `login` too (or "
                              "leave it out to use Slurm's commands on this machine)")
    names: dict[str, str | None] = {}
    for key in ("partition", "account", "qos"):
        value = check.string(raw, key, f"{where}.")
        if value is not None and not _SLURM_NAME.fullmatch(value):
            check.problem(f"{where}.{key}", f"{json.dumps(value)} is not a Slurm name "
                          "(letters, digits and _.+- only)")
            value = None
        names[key] = value
    output = check.string(raw, "output", f"{where}.") or Cluster.output
    if any(c in output for c in "\n'%\\"):
        check.problem(f"{where}.output", "must not hold a newline, a quote, % or \\ "
                      "(sbatch reads % and \\ in its --output as patterns)")
        output = Cluster.output
    return Cluster(name=name or "", login=login, partition=names["partition"],
                   account=names["account"], qos=names["qos"],
                   defaults=_limits(check, raw, CLUSTER_LIMITS, f"{where}."), output=output)


def _named_tables(check: _Checker, data: Mapping[str, Any], key: str, kind: str,
                  read: Callable[[_Checker, Any, str], _N | None],
                  taken: Mapping[str, str] | None = None) -> list[_N]:
    """The array of tables `key` ([[hosts]], [[clusters]]), each read by `read`; a name used
    twice, or already `taken` (name -> what has it), is a problem at its path."""
    raw_tables = data.get(key, [])
    if not isinstance(raw_tables, list):
        check.problem(key, f"must be an array of tables ([[{key}]])")
        return []
    found: list[_N] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_tables):
        item = read(check, raw, f"{key}[{index}]")
        if item is None:
            continue
        if item.name and item.name in seen:
            check.problem(f"{key}[{index}].name", f"duplicate {kind} {item.name!r}")
        elif taken and item.name in taken:
            check.problem(f"{key}[{index}].name", f"{item.name!r} is a {taken[item.name]}'s "
                          f"name too (a name is either a host or a cluster)")
        seen.add(item.name)
        found.append(item)
    return found


def _limit_text(check: _Checker, value: Any, where: str) -> str | None:
    """A limit as TOML gives it: a string ("512M", "10m"), or a plain number for the limits
    that have one (bytes, seconds, tasks)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        # Plain digits ("1e+06" is no duration): as many decimals as a float can hold.
        return f"{value:.6f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)
    check.problem(where, "must be a string such as \"512M\", or a number")
    return None


def _limit_value(check: _Checker, table: Mapping[str, Any], key: str, where: str,
                 read: Callable[[str], _T]) -> _T | None:
    """One limit-like setting read as the command-line option would be; None if absent or
    bad (the problem is recorded with its path)."""
    if key not in table:
        return None
    text = _limit_text(check, table[key], f"{where}{key}")
    if text is None:
        return None
    try:
        return read(text)
    except job_limits.LimitError as error:
        check.problem(f"{where}{key}", f"{error.shown}: {error.why}")
        return None


def _limits(check: _Checker, table: Mapping[str, Any], names: tuple[str, ...],
            where: str) -> job_limits.Limits:
    values: dict[str, Any] = {}
    for name in names:
        # The file may be shared by machines of any size: no bound by this one's CPUs.
        value = _limit_value(check, table, name, where, functools.partial(
            job_limits.parse, name, cpus=job_limits.MAX_CPUS))
        if value is not None:
            values[name] = value
    return job_limits.Limits(**values)


def _check_jobs(check: _Checker, raw: Any) -> JobsConfig:
    """`[jobs]`, with the same syntax and rules as the command-line options."""
    if not isinstance(raw, dict):
        check.problem("jobs", "must be a table")
        return JobsConfig()
    check.unknown_keys(raw, _JOBS_KEYS, "jobs.")
    isolate = JobsConfig.isolate
    if "isolate" in raw:
        value = raw["isolate"]
        if (not isinstance(value, list) or not all(isinstance(v, str) for v in value)
                or not set(value) <= set(ISOLATIONS) or len(set(value)) != len(value)):
            check.problem("jobs.isolate", "must be a list of distinct names from "
                                          f"{', '.join(ISOLATIONS)} (or [] for none)")
        else:
            isolate = tuple(value)
    keep = check.integer(raw, "keep", "jobs.", 0, 1_000_000)
    max_age = _limit_value(check, raw, "max_age", "jobs.",
                           functools.partial(job_limits.parse_duration, "max_age"))
    max_output = _limit_value(check, raw, "max_output", "jobs.",
                              functools.partial(job_limits.parse_size, "max_output", minimum=0))
    all_table = raw.get("all", {})
    if not isinstance(all_table, dict):
        check.problem("jobs.all", "must be a table")
        all_table = {}
    check.unknown_keys(all_table, set(ALL_JOBS_LIMITS), "jobs.all.")
    slots = check.integer(raw, "slots", "jobs.", 1, 100_000)
    groups_table = raw.get("groups", {})
    groups: list[tuple[str, int]] = []
    if not isinstance(groups_table, dict):
        check.problem("jobs.groups", "must be a table of group names and their parallel limits")
        groups_table = {}
    for name in groups_table:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            check.problem(f"jobs.groups.{name}", "a group name is 1-64 letters, digits, '_.-'")
            continue
        limit = check.integer(groups_table, name, "jobs.groups.", 1, 100_000)
        if limit is not None:
            groups.append((name, limit))
    return JobsConfig(
        slots=slots, groups=tuple(groups),
        defaults=_limits(check, raw, JOB_DEFAULT_LIMITS, "jobs."),
        isolate=isolate,
        keep=JobsConfig.keep if keep is None else keep,
        max_age=JobsConfig.max_age if max_age is None else max_age,
        max_output=JobsConfig.max_output if max_output is None else max_output,
        all=_limits(check, all_table, ALL_JOBS_LIMITS, "jobs.all."),
    )


def from_mapping(data: Mapping[str, Any], source: str, hosts_env: str | None) -> Config:
    """Validate parsed TOML (and DISTSVC_HOSTS), raising ConfigError with every problem."""
    check = _Checker()
    check.unknown_keys(data, _TOP_KEYS, "")

    hosts = _named_tables(check, data, "hosts", "host", _check_host)

    if hosts_env is not None and hosts_env.strip():
        # DISTSVC_HOSTS replaces the file's list; a name the file knows keeps its settings.
        by_name = {h.name: h for h in hosts}
        hosts = []
        specs = [s for s in (s.strip() for s in re.split(r"[;,]", hosts_env)) if s]
        if not specs:
            check.problem("DISTSVC_HOSTS", f"{json.dumps(hosts_env)} names no host (name "
                          "hosts separated by ',' or ';', or unset it to use the file's)")
        for spec in specs:
            parsed = parse_host_spec(spec)
            if parsed is None:
                check.problem("DISTSVC_HOSTS", _spec_problem(spec))
                continue
            known = by_name.get(parsed.name, Host(name=parsed.name))
            hosts.append(dataclasses.replace(
                known, user=parsed.user or known.user, port=parsed.port or known.port))

    policy = data.get("host_key_policy", "strict")
    if policy not in HOST_KEY_POLICIES:
        check.problem("host_key_policy", f"must be one of {', '.join(HOST_KEY_POLICIES)}")
        policy = "strict"

    env_table = data.get("env", {})
    if not isinstance(env_table, dict):
        check.problem("env", "must be a table")
        env_table = {}
    check.unknown_keys(env_table, {"allow", "deny"}, "env.")
    allow = check.patterns(env_table, "allow", "env.")
    deny = check.patterns(env_table, "deny", "env.")

    config = Config(
        source=source,
        hosts=tuple(hosts),
        probe_timeout=check.number(data, "probe_timeout", "", 2.0),
        connect_timeout=check.number(data, "connect_timeout", "", 5.0),
        max_age=check.number(data, "max_age", "", 30.0),
        daemon_idle_exit=check.number(data, "daemon_idle_exit", "", 600.0),
        host_key_policy=policy,
        env=EnvFilter(
            allow=allow if allow is not None else EnvFilter.allow,
            deny=DEFAULT_ENV_DENY + (deny or ()),
        ),
        jobs=_check_jobs(check, data.get("jobs", {})),
        clusters=tuple(_named_tables(check, data, "clusters", "cluster", _check_cluster,
                                     {h.name: "host" for h in hosts})),
    )
    if check.problems:
        raise distsvc.errors.ConfigError(source, check.problems)
    return config


def load(path: Path | None, environ: Mapping[str, str]) -> Config:
    """The effective configuration. A missing default file is an empty config, not an error."""
    explicit = path is not None
    path = path or distsvc.paths.config_file(environ)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise distsvc.errors.ConfigError(str(path), ["file not found"]) from None
        text = ""
    except UnicodeDecodeError as error:
        raise distsvc.errors.ConfigError(
            str(path), [f"not UTF-8 text (byte {error.start})"]) from None
    except OSError as error:
        raise distsvc.errors.ConfigError(str(path), [error.strerror or str(error)]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise distsvc.errors.ConfigError(str(path), [f"not valid TOML: {error}"]) from None
    return from_mapping(data, str(path), environ.get("DISTSVC_HOSTS"))


def to_mapping(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, for `distsvc config check`."""
    data = dataclasses.asdict(config)
    data["hosts"] = [{k: v for k, v in h.items() if v is not None} for h in data["hosts"]]
    data["env"] = {"allow": list(config.env.allow), "deny": list(config.env.deny)}
    data["jobs"] = _jobs_mapping(config.jobs)
    data["clusters"] = [_cluster_mapping(c) for c in config.clusters]
    if not data["clusters"]:
        del data["clusters"]  # a file without clusters shows none
    return data


def _cluster_mapping(cluster: Cluster) -> dict[str, Any]:
    """A cluster as it is written in the file (what from_mapping reads back)."""
    shown: dict[str, Any] = {"name": cluster.name}
    if cluster.login is not None:
        shown["login"] = cluster.login.name
        shown.update({k: v for k in ("address", "port", "user")
                      if (v := getattr(cluster.login, k)) is not None})
    shown.update({k: v for k in ("partition", "account", "qos")
                  if (v := getattr(cluster, k)) is not None})
    shown["output"] = cluster.output
    shown.update(_limits_mapping(cluster.defaults))
    return shown


def _limits_mapping(limits: job_limits.Limits) -> dict[str, Any]:
    """Limits as they are written in the file (what from_mapping reads back)."""
    shown: dict[str, Any] = dict(job_limits.describe(limits))
    for name in ("tasks", "io_weight"):
        if name in shown:
            shown[name] = int(shown[name])
    return shown


def _jobs_mapping(jobs: JobsConfig) -> dict[str, Any]:
    return {
        **_limits_mapping(jobs.defaults),
        "isolate": list(jobs.isolate),
        "keep": jobs.keep,
        "max_age": job_limits.format_duration(jobs.max_age),
        "max_output": job_limits.format_size(jobs.max_output),
        "all": _limits_mapping(jobs.all),
        **({"slots": jobs.slots} if jobs.slots is not None else {}),
        **({"groups": dict(jobs.groups)} if jobs.groups else {}),
    }


def from_wire(data: Any) -> Config:
    """A Config sent by a client (to_mapping's output), validated like a file."""
    if not isinstance(data, dict):
        raise distsvc.errors.ConfigError("request", ["config must be an object"])
    fields = {k: v for k, v in data.items() if k != "source"}
    env = fields.get("env")
    if isinstance(env, dict) and isinstance(env.get("deny"), list):
        # to_mapping lists the built-in denials too; from_mapping adds them back itself.
        fields["env"] = {**env, "deny": [d for d in env["deny"] if d not in DEFAULT_ENV_DENY]}
    return from_mapping(fields, f"request ({data.get('source', 'client')})", None)
