"""A job's isolation: which unit properties and command prefix give each kind, and a probe that
observes from inside a unit which kinds this manager really gives.

Kinds, each on by default for jobs and each switchable off:

- "pid": a PID namespace, so `ps -e` inside shows only the job's processes. systemd 252 has
  no PrivatePIDs= (257 has), so the unit's command is prefixed with `pidinit.py`, which makes
  the namespace (inside a user namespace it owns on a user manager), mounts its /proc and
  keeps the command's exit status and signal (see its docstring for why not plain unshare).
- "mount": a private mount namespace (PrivateMounts=) with its own, empty /tmp (PrivateTmp=).
  Its own /proc comes with "pid" (pidinit mounts the PID namespace's). A system manager also
  mounts a /proc instance that shows no other user's processes (ProtectProc=invisible); a
  user manager (252) silently leaves the host's /proc there, and could not mount another
  without a PID namespace of its own, so the property is not asked of it.
- "network": a network namespace with only loopback (PrivateNetwork=). Seen inside in
  /proc/net/dev; /sys/class/net still lists the host's interfaces (sysfs is not remounted).

On a user manager (systemd 252) PrivateTmp=, PrivateNetwork= and the other namespace settings
are silently ignored unless PrivateUsers=yes is set too (the manager needs a user namespace to
make them), so "mount" and "network" add it there; the user's own uid and gid map to
themselves, every other id shows as nobody.

A manager may still not give what the properties ask (a kernel without user namespaces, a
setting ignored with only a journal line), so `probe` starts one short unit with every kind
on and checks each from inside; the caller caches the result and refuses a job asking for a
kind the probe did not see working, instead of starting it without.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import distsvc.errors
from distsvc.adapters.systemd.units import Manager, UnitError

KINDS = ("pid", "mount", "network")
PIDINIT = str(Path(__file__).with_name("pidinit.py"))
PROBE_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class Plan:
    properties: Mapping[str, object]
    """To add to the unit's properties."""
    argv_prefix: Sequence[str]
    """To put before the command."""


def plan(kinds: Collection[str], user_manager: bool) -> Plan:
    """What gives the isolation `kinds` to a transient service on a user (or system) manager."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise distsvc.errors.UsageError(
            f"unknown isolation {', '.join(unknown)} (known: {', '.join(KINDS)})")
    properties: dict[str, object] = {}
    if "mount" in kinds:
        properties.update(PrivateMounts=True, PrivateTmp=True)
        if not user_manager:
            properties["ProtectProc"] = "invisible"
    if "network" in kinds:
        properties["PrivateNetwork"] = True
    if user_manager and properties:
        properties["PrivateUsers"] = True
    prefix: list[str] = []
    if "pid" in kinds:
        prefix = [*pidinit_command(), *(["--user-namespace"] if user_manager else []), "--"]
    return Plan(properties=properties, argv_prefix=prefix)


@functools.cache
def pidinit_command() -> tuple[str, ...]:
    """How a unit runs pidinit: its source given with -c to the base interpreter, so no file
    of this installation (a venv, or a checkout under /tmp that PrivateTmp= hides) needs to
    be visible inside the job's mount namespace."""
    base = str(getattr(sys, "_base_executable", "") or sys.executable)  # a venv's base python
    return (base, "-I", "-S", "-c",
            Path(PIDINIT).read_text(encoding="utf-8"))


# What the probe unit prints, one `key=value` a line (dash and coreutils only).
PROBE_SCRIPT = r"""
echo "pid_ns=$(readlink /proc/self/ns/pid)"
echo "mnt_ns=$(readlink /proc/self/ns/mnt)"
echo "net_ns=$(readlink /proc/self/ns/net)"
echo "self=$$"
n=0; for p in /proc/[0-9]*; do n=$((n + 1)); done; echo "procs=$n"
echo "tmp=$(stat -c %d:%i /tmp)"
echo "tmp_entries=$(ls -A /tmp | wc -l)"
touch /tmp/distsvc-probe && echo "tmp_writable=yes"
echo "ifaces=$(tail -n +3 /proc/self/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
echo "end=yes"
"""


def _namespaces(pid: int | str) -> dict[str, str]:
    found = {}
    for kind in ("pid", "mnt", "net"):
        with contextlib.suppress(OSError):
            found[kind] = os.readlink(f"/proc/{pid}/ns/{kind}")
    return found


def _manager_namespaces(manager: Manager) -> dict[str, str]:
    """The manager's own namespaces (its process is in its init.scope), else ours."""
    with contextlib.suppress(UnitError):
        for pid in manager.processes("init.scope"):
            found = _namespaces(pid)
            if len(found) == 3:
                return found
    return _namespaces("self")


def judge(seen: Mapping[str, str], outside: Mapping[str, str], host_tmp: str,
          failure: str | None) -> dict[str, str | None]:
    """Each kind -> None if what the probe unit printed (`seen`) shows it working, else why
    not. `outside`: the manager's namespace links; `host_tmp`: "dev:inode" of its /tmp."""
    if failure is not None:
        return dict.fromkeys(KINDS, failure)
    results: dict[str, str | None] = {}
    if seen.get("pid_ns") in (None, "", outside.get("pid")):
        results["pid"] = "the probe unit ran in the manager's PID namespace"
    elif seen.get("self") != "2" or not seen.get("procs", "").isdigit() \
            or int(seen["procs"]) > 4:
        results["pid"] = (f"the probe unit's /proc shows {seen.get('procs')} processes, "
                          "not only its own")
    else:
        results["pid"] = None
    if seen.get("mnt_ns") in (None, "", outside.get("mnt")):
        results["mount"] = "the probe unit ran in the manager's mount namespace"
    elif seen.get("tmp") == host_tmp or seen.get("tmp_entries") != "0" \
            or seen.get("tmp_writable") != "yes":
        results["mount"] = "the probe unit's /tmp was not a private, empty, writable one"
    else:
        results["mount"] = None
    if seen.get("net_ns") in (None, "", outside.get("net")):
        results["network"] = "the probe unit ran in the manager's network namespace"
    elif seen.get("ifaces", "").split() != ["lo"]:
        results["network"] = f"the probe unit saw network interfaces {seen.get('ifaces')!r}"
    else:
        results["network"] = None
    return results


def _wait_for_end(manager: Manager, name: str) -> str | None:
    """None once the probe unit's command ended with status 0, else what happened."""
    deadline = time.monotonic() + PROBE_TIMEOUT
    while time.monotonic() < deadline:
        state = manager.state(name)
        if state is None:
            return "the probe unit vanished before its result was read"
        if state.active_state == "failed" or (state.active_state == "active"
                                              and state.sub_state == "exited"):
            if state.result == "success" and state.exec_main_status == 0:
                return None
            return (f"the probe unit failed ({state.result}, status "
                    f"{state.exec_main_status})")
        time.sleep(0.05)
    return f"the probe unit did not finish within {PROBE_TIMEOUT:.0f} s"


def probe(manager: Manager) -> dict[str, str | None]:
    """Each kind -> None if a probe unit observed it working, else the reason it cannot be had.

    One transient service with every kind on runs PROBE_SCRIPT and writes what it sees to a
    file in a private directory of ours (outside /tmp, which it must not see)."""
    directory = tempfile.mkdtemp(prefix="distsvc-probe-", dir=_probe_parent())
    name = f"distsvc-probe-{os.getpid()}-{time.monotonic_ns()}.service"
    output, errors = Path(directory, "stdout"), Path(directory, "stderr")
    isolated = plan(KINDS, manager.user)
    try:
        failure: str | None = None
        try:
            manager.start_service(
                name, [*isolated.argv_prefix, "/bin/sh", "-c", PROBE_SCRIPT],
                {**isolated.properties, "RemainAfterExit": True, "Type": "exec",
                 "StandardInput": "null", "StandardOutputFileToAppend": str(output),
                 "StandardErrorFileToAppend": str(errors), "CollectMode": "inactive-or-failed"},
                "distsvc: probing job isolation")
            failure = _wait_for_end(manager, name)
        except UnitError as error:
            failure = error.message
        text = output.read_text(errors="replace") if output.exists() else ""
        said = errors.read_text(errors="replace").strip() if errors.exists() else ""
        if failure is not None and said:
            failure += f": {said.splitlines()[-1]}"
        seen = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)
        if failure is None and seen.get("end") != "yes":
            failure = "the probe unit's output was cut short"
        host = os.stat("/tmp")
        return judge(seen, _manager_namespaces(manager), f"{host.st_dev}:{host.st_ino}",
                     failure)
    finally:
        with contextlib.suppress(UnitError):
            manager.stop(name)
            manager.reset_failed(name)
        shutil.rmtree(directory, ignore_errors=True)


def _probe_parent() -> str | None:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return runtime if runtime and os.path.isdir(runtime) else None
