"""Resource limits of a job: parsing what people write, and what systemd is told.

Pure: no I/O, so the commands, the configuration (`[jobs]`) and the daemon share one set of
rules and one wording of every refusal. The syntax follows systemd's where it has one
(sizes with K, M, G, T in base 1024; CPU as a percentage of one CPU), so what a user knows
from `systemd-run -p` carries over.

Choices (the option help and docs/architecture.md say the same):
- sizes: a whole number of bytes, or a number (decimals allowed) with K, M, G or T
  (case-insensitive, base 1024); memory at least 1M (less cannot run a shell), bandwidth
  at least 1 byte/s and may end in "/s".
- cpu: the "%" is required ("1.5" could mean 1.5 CPUs or 1.5%), a whole number from 1 to
  100 x this machine's CPUs for an option (more cannot be used, so asking for it is a
  mistake); the configuration, which may be shared by machines of any size, is checked
  against MAX_CPUS instead, and a default above the machine's CPUs simply does not bind.
- timeout: seconds, or a number with s, m, h or d, also several in a row ("1h30m"); > 0.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import distsvc.errors

FIELDS = ("memory", "cpu", "tasks", "io_weight", "io_read", "io_write", "timeout")

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)(/S)?$", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")

MAX_SIZE = 1 << 60            # 1048576T: far beyond any machine, well within systemd's uint64
MAX_CPUS = 4096               # the bound of --cpu where the machine is not the one asking
MAX_TASKS = 4_194_304         # the kernel's PID_MAX_LIMIT
MAX_TIMEOUT = 3650 * 86400.0  # ten years; systemd's microseconds stay far from overflowing

_SIZE_HINT = "use a number with K, M, G or T, e.g. 512M"


class LimitError(distsvc.errors.UsageError):
    """A limit that cannot be used, said in one line naming the option as it was written.

    `field` and `why` are kept apart so the configuration can say `jobs.memory: ...` with
    the same reason.
    """

    def __init__(self, field: str, text: str, why: str) -> None:
        self.field = field
        self.text = text
        self.why = why
        # What was written, kept to one line: quoted if it holds a newline or the like.
        self.shown = text if text.isprintable() else json.dumps(text)
        super().__init__(f"{option(field)} {self.shown}: {why}")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a job may use; None leaves the resource unlimited (or to the defaults)."""

    memory: int | None = None      # bytes (MemoryMax)
    cpu: int | None = None         # percent of one CPU (CPUQuota)
    tasks: int | None = None       # processes and threads (TasksMax)
    io_weight: int | None = None   # 1..10000 (IOWeight)
    io_read: int | None = None     # bytes/s on the working directory's device
    io_write: int | None = None    # bytes/s on the working directory's device
    timeout: float | None = None   # seconds (RuntimeMaxSec)


def option(field: str) -> str:
    """The command-line spelling of a field: io_read -> --io-read."""
    return "--" + field.replace("_", "-")


def _field(name: str) -> str:
    field = name.removeprefix("--").replace("-", "_")
    if field not in FIELDS:
        raise ValueError(f"not a limit: {name}")
    return field


def parse_size(field: str, text: str, minimum: int = 1) -> int:
    """Bytes from "512M" (K, M, G, T: base 1024) or a whole number; the bandwidth fields may
    end in "/s". Also for sizes outside Limits (jobs.max_output)."""
    match = _SIZE.match(text.strip())
    per_second = field in ("io_read", "io_write")
    if (match is None or ("." in match[1] and not match[2])
            or (match[3] is not None and not per_second)):
        hint = _SIZE_HINT + ("/s" if per_second else "")
        raise LimitError(field, text, f"not a size ({hint})")
    value = int(float(match[1]) * _UNITS[match[2].upper()])
    if value < minimum:
        raise LimitError(field, text, f"too small (at least {format_size(minimum)})")
    if value > MAX_SIZE:
        raise LimitError(field, text, f"too large (at most {format_size(MAX_SIZE)})")
    return value


def _integer(field: str, text: str, lo: int, hi: int) -> int:
    if not re.fullmatch(r"\d+", text.strip()):
        raise LimitError(field, text, f"not a whole number (use {lo} to {hi})")
    value = int(text)
    if not lo <= value <= hi:
        raise LimitError(field, text, f"out of range (use {lo} to {hi})")
    return value


def _cpu(text: str, cpus: int) -> int:
    body = text.strip()
    if not body.endswith("%") or not re.fullmatch(r"\d+", body[:-1].strip()):
        raise LimitError("cpu", text, "not a percentage (use N% of one CPU, e.g. 150%)")
    value = int(body[:-1])
    if not 1 <= value <= 100 * cpus:
        plural = "" if cpus == 1 else "s"
        raise LimitError("cpu", text, f"out of range (use 1% to {100 * cpus}%: "
                                      f"this machine has {cpus} CPU{plural})")
    return value


def parse_duration(field: str, text: str) -> float:
    """Seconds from "10m", "1h30m", "1.5s" or bare seconds; more than 0, at most ten years.
    Also for durations outside Limits (jobs.max_age)."""
    body = text.strip()
    if _NUMBER.match(body):
        seconds = float(body)
    elif body and _DURATION_PART.sub("", body) == "":
        seconds = sum(float(number) * _DURATION_UNITS[unit]
                      for number, unit in _DURATION_PART.findall(body))
    else:
        raise LimitError(field, text, "not a duration (use seconds or a number with "
                                      "s, m, h or d, e.g. 10m)")
    if seconds <= 0:
        raise LimitError(field, text, "too short (more than 0 seconds)")
    if seconds > MAX_TIMEOUT:
        raise LimitError(field, text, f"too long (at most {format_duration(MAX_TIMEOUT)})")
    return seconds


def parse(name: str, text: str, cpus: int | None = None) -> int | float:
    """The value of one limit as written on the command line or in the configuration.

    `name` is the field ("io_read") or the option ("--io-read"); raises LimitError with one
    line naming the option and what to write instead. `cpus` (default: this machine's)
    bounds --cpu.
    """
    field = _field(name)
    if field == "memory":
        return parse_size(field, text, 1 << 20)
    if field in ("io_read", "io_write"):
        return parse_size(field, text, 1)
    if field == "cpu":
        return _cpu(text, cpus or os.cpu_count() or 1)
    if field == "tasks":
        return _integer(field, text, 1, MAX_TASKS)
    if field == "io_weight":
        return _integer(field, text, 1, 10_000)
    return parse_duration(field, text)


def parse_all(texts: Mapping[str, str | None], cpus: int | None = None) -> Limits:
    """Limits from option texts by field or option name; None or missing fields stay unset.

    Raises LimitError for the first bad one (the user sees one line, fixes it, and learns of
    the next).
    """
    values: dict[str, Any] = {}
    for name, text in texts.items():
        if text is not None:
            values[_field(name)] = parse(name, text, cpus)
    return Limits(**values)


def merge(defaults: Limits, asked: Limits) -> Limits:
    """`asked` wins field by field; what it leaves unset comes from `defaults`."""
    return Limits(**{f: _pick(getattr(asked, f), getattr(defaults, f)) for f in FIELDS})


def _pick(asked: Any, default: Any) -> Any:
    return default if asked is None else asked


def is_empty(limits: Limits) -> bool:
    return all(getattr(limits, f) is None for f in FIELDS)


def properties(limits: Limits, workdir: str) -> dict[str, object]:
    """The unit properties (systemd's D-Bus names and units) that enforce `limits`.

    Bandwidth limits name the job's working directory: systemd applies them to the block
    device backing that path's file system, which is where the job's files most likely go.
    Values are plain Python; encoding them for D-Bus is the systemd adapter's business.
    """
    props: dict[str, object] = {}
    if limits.memory is not None:
        props["MemoryMax"] = limits.memory
    if limits.cpu is not None:
        props["CPUQuotaPerSecUSec"] = limits.cpu * 10_000
    if limits.tasks is not None:
        props["TasksMax"] = limits.tasks
    if limits.io_weight is not None:
        props["IOWeight"] = limits.io_weight
    if limits.io_read is not None:
        props["IOReadBandwidthMax"] = [(workdir, limits.io_read)]
    if limits.io_write is not None:
        props["IOWriteBandwidthMax"] = [(workdir, limits.io_write)]
    if limits.timeout is not None:
        props["RuntimeMaxUSec"] = round(limits.timeout * 1_000_000)
    return props


_CONTROLLERS = {"memory": "memory", "cpu": "cpu", "tasks": "pids", "io_weight": "io",
                "io_read": "io", "io_write": "io"}


def controllers(limits: Limits) -> dict[str, str]:
    """Each set limit -> the cgroup controller that must be delegated to enforce it.

    The timeout is systemd's own (RuntimeMaxSec) and needs none.
    """
    return {f: c for f, c in _CONTROLLERS.items() if getattr(limits, f) is not None}


def format_size(value: int) -> str:
    """Exact and short: the largest unit that divides the value (1536M, not 1.5G)."""
    for unit in ("T", "G", "M", "K"):
        if value % _UNITS[unit] == 0:
            return f"{value // _UNITS[unit]}{unit}"
    return str(value)


def format_duration(seconds: float) -> str:
    """Exact and short: 90 -> "1m30s", 600 -> "10m", 1.5 -> "1.5s"; parse() reads it back."""
    whole, fraction = divmod(seconds, 1)
    rest = int(whole)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    if rest or fraction or not parts:
        parts.append(f"{rest + fraction:g}s" if fraction else f"{rest}s")
    return "".join(parts)


def describe(limits: Limits) -> dict[str, str]:
    """For people and for `config check`: each set limit as it could be written again."""
    shown: dict[str, str] = {}
    for field in FIELDS:
        value = getattr(limits, field)
        if value is None:
            continue
        if field in ("memory", "io_read", "io_write"):
            shown[field] = format_size(value) + ("/s" if field != "memory" else "")
        elif field == "cpu":
            shown[field] = f"{value}%"
        elif field == "timeout":
            shown[field] = format_duration(value)
        else:
            shown[field] = str(value)
    return shown


def to_json(limits: Limits) -> dict[str, int | float]:
    """The set fields in their base units (bytes, percent, seconds)."""
    return {f: getattr(limits, f) for f in FIELDS if getattr(limits, f) is not None}


def from_json(data: Any) -> Limits:
    """to_json's output back; ValueError naming the field on anything else."""
    if not isinstance(data, dict):
        raise ValueError("limits: not an object")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in FIELDS:
            raise ValueError(f"limits.{key}: unknown limit")
        number = (int, float) if key == "timeout" else (int,)
        if isinstance(value, bool) or not isinstance(value, number) or value <= 0:
            raise ValueError(f"limits.{key}: not a positive number")
        values[key] = float(value) if key == "timeout" else value
    return Limits(**values)
