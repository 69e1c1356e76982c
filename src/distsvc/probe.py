"""The load probe: a POSIX shell script run on each host, and the parser of what it prints.

No I/O here. The script needs only a POSIX shell and /proc (Linux); distsvc need not be
installed on the host. Shell start-up files may print junk around it, so the parser takes
the last well-formed line and ignores the rest.
"""

from __future__ import annotations

import dataclasses
import math
import re

PROBE_FORMAT_VERSION = "1"

# One line: "distsvc-probe 1 load1=0.52 cpus=- cpulist=0-7 cpumax=max/100000 psi=1.20
# memavail_kb=123". Shell builtins only (read, case): the probe runs on every host of every
# scan, and each process it started (nproc, cat, tr, sed) cost the host a fork and an exec,
# a third of what a scan costs a host. The usable CPUs are the shell's own affinity
# (Cpus_allowed_list, what nproc counts); `nproc`/`getconf` only where /proc lacks it;
# cpu.max (cgroup v2) caps what a quota allows. Errors are silenced before each file opens.
PROBE_SCRIPT = r"""
l=; n=; c=; q=; p=; m=
{ read l _; } 2>/dev/null </proc/loadavg
while read k v; do case $k in Cpus_allowed_list:) c=$v; break;; esac
done 2>/dev/null </proc/self/status
[ -n "$c" ] || n=$(unset OMP_NUM_THREADS OMP_THREAD_LIMIT
  nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null)
{ read a b; } 2>/dev/null </sys/fs/cgroup/cpu.max && q=$a/$b
{ read s a _; } 2>/dev/null </proc/pressure/cpu && case $s in some) p=${a#avg10=};; esac
while read k v _; do case $k in MemAvailable:) m=$v; break;; esac
done 2>/dev/null </proc/meminfo
echo "distsvc-probe 1 load1=${l:--} cpus=${n:--} cpulist=${c:--} cpumax=${q:--} psi=${p:--} \
memavail_kb=${m:--}"
""".strip()

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_BARE_NUMBER = re.compile(rf"^\s*({_NUMBER})\s*$")
_FIELD = re.compile(r"(\w+)=(\S+)")


@dataclasses.dataclass(frozen=True)
class Measurement:
    """What one probe of one host found. None means "not reported by this host"."""

    load1: float | None = None
    cpus: int | None = None
    psi_some_avg10: float | None = None
    mem_available_kb: int | None = None
    # A custom probe's own figure (lower is better), used as the score when present.
    metric: float | None = None


def _float(value: str | None) -> float | None:
    if value is None or not re.fullmatch(_NUMBER, value):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def _cpu_list(cpu_list: str | None) -> int | None:
    """How many CPUs a list like "0-3,8,10-11" (Cpus_allowed_list) names; None if malformed."""
    if not cpu_list or not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", cpu_list):
        return None
    count = 0
    for part in cpu_list.split(","):
        first, _, last = part.partition("-")
        count += max(0, int(last or first) - int(first) + 1)
    return count or None


def _cpus(count: str | None, cpu_list: str | None, cpu_max: str | None) -> int | None:
    cpus = _cpu_list(cpu_list) or _float(count)
    usable = int(cpus) if cpus and cpus >= 1 else None
    if cpu_max and "/" in cpu_max:
        quota, period = (_float(part) for part in cpu_max.split("/", 1))
        if quota and period:
            capped = max(1, math.ceil(quota / period))
            usable = min(usable, capped) if usable else capped
    return usable


def _parse_line(line: str) -> Measurement | None:
    bare = _BARE_NUMBER.match(line)
    if bare:
        metric = _float(bare.group(1))
        return Measurement(metric=metric) if metric is not None else None
    fields = dict(_FIELD.findall(line))
    load1 = _float(fields.get("load1"))
    if load1 is None:
        return None
    memory = _float(fields.get("memavail_kb"))
    return Measurement(
        load1=load1,
        cpus=_cpus(fields.get("cpus"), fields.get("cpulist"), fields.get("cpumax")),
        psi_some_avg10=_float(fields.get("psi")),
        mem_available_kb=int(memory) if memory is not None else None,
    )


def parse_output(output: str) -> Measurement | None:
    """The last well-formed line of a probe's output, or None if there is none.

    A well-formed line is either the built-in format (any line with a numeric `load1=`),
    or, from a custom probe, a line holding a single non-negative number.
    """
    for line in reversed(output.splitlines()):
        measurement = _parse_line(line)
        if measurement is not None:
            return measurement
    return None
