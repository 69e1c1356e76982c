"""Transient units on a systemd service manager, through pystemd's D-Bus binding.

Jobs run as transient service units and limited foreground commands as transient scopes, on
the user's manager (the system manager when we are root). This module is the only importer
of pystemd, and imports it only when a `Manager` is made, so `import distsvc.adapters.systemd`
stays cheap and works without it.

Only pystemd's low-level bus (`pystemd.dbuslib.DBus`) is used. Its high-level objects
introspect every unit over the bus and encode properties from a table that lacks several
settings distsvc needs (ProtectProc, ProcSubset, IOWeight, IO*BandwidthMax, PrivatePIDs...),
so this module keeps its own table, `SIGNATURES`, of systemd's D-Bus property names and
signatures, and encodes the values itself (`encode_properties`) into the form the bus's
`call_method` appends: `(type code, value)` pairs, containers opened with their contents'
signature and closed by `(-1, None)`. Values are plain Python (str, bool, int, lists, tuples);
`None` for a `t` (uint64) property means infinity. An unknown name or a value of the wrong
type is a `UnitError` naming the property, before anything is sent.

Waiting for a job (start, stop) listens for the manager's JobRemoved signal on the same
connection: a match is added once, and signals arriving while a method call waits for its
reply are queued by sd-bus, so none is missed.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import distsvc.errors
import distsvc.polling

DESTINATION = b"org.freedesktop.systemd1"
MANAGER_PATH = b"/org/freedesktop/systemd1"
MANAGER_IFACE = b"org.freedesktop.systemd1.Manager"
UNIT_IFACE = b"org.freedesktop.systemd1.Unit"
PROPERTIES_IFACE = b"org.freedesktop.DBus.Properties"
UINT64_MAX = 2**64 - 1
JOB_TIMEOUT = 60.0
"""Seconds a start or stop job may take before we give up waiting (systemd's own default
start and stop timeouts are 90 s; ours are set per unit)."""
WAIT_SLICE = 0.05
"""Longest wait for the bus without looking whether another thread got our job's end."""

# systemd's D-Bus property names and signatures (systemd.exec(5), .resource-control(5),
# .service(5), .scope(5), .kill(5), .unit(5); the signatures as in src/core/dbus-*.c).
_EXEC = {
    "WorkingDirectory": "s", "Environment": "as", "UnsetEnvironment": "as",
    "PassEnvironment": "as", "EnvironmentFiles": "a(sb)", "User": "s", "Group": "s",
    "SupplementaryGroups": "as", "UMask": "u", "Nice": "i", "OOMScoreAdjust": "i",
    "IOSchedulingClass": "i", "IOSchedulingPriority": "i", "CPUSchedulingPolicy": "i",
    "StandardInput": "s", "StandardOutput": "s", "StandardError": "s",
    "StandardInputFile": "s", "StandardInputData": "ay",
    "StandardOutputFile": "s", "StandardOutputFileToAppend": "s",
    "StandardOutputFileToTruncate": "s", "StandardErrorFile": "s",
    "StandardErrorFileToAppend": "s", "StandardErrorFileToTruncate": "s",
    "SyslogIdentifier": "s", "IgnoreSIGPIPE": "b", "TTYPath": "s",
    "PrivateTmp": "b", "PrivateDevices": "b", "PrivateNetwork": "b", "PrivateUsers": "b",
    "PrivateIPC": "b", "PrivateMounts": "b", "PrivatePIDs": "b",
    "ProtectProc": "s", "ProcSubset": "s", "ProtectHome": "s", "ProtectSystem": "s",
    "ProtectKernelTunables": "b", "ProtectKernelModules": "b", "ProtectKernelLogs": "b",
    "ProtectControlGroups": "b", "ProtectClock": "b", "ProtectHostname": "b",
    "NoNewPrivileges": "b", "RestrictNamespaces": "t", "LockPersonality": "b",
    "MemoryDenyWriteExecute": "b", "RestrictRealtime": "b", "RestrictSUIDSGID": "b",
    "RemoveIPC": "b", "MountAPIVFS": "b", "KeyringMode": "s", "RootDirectory": "s",
    "ReadWritePaths": "as", "ReadOnlyPaths": "as", "InaccessiblePaths": "as",
    "TemporaryFileSystem": "a(ss)", "BindPaths": "a(ssbt)", "BindReadOnlyPaths": "a(ssbt)",
    **{f"Limit{name}{soft}": "t" for name in (
        "CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NOFILE", "AS", "NPROC", "MEMLOCK",
        "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME") for soft in ("", "Soft")},
}
_CGROUP = {
    "Slice": "s", "Delegate": "b", "DelegateControllers": "as",
    "CPUAccounting": "b", "CPUWeight": "t", "StartupCPUWeight": "t",
    "CPUQuotaPerSecUSec": "t", "CPUQuotaPeriodUSec": "t",
    "IOAccounting": "b", "IOWeight": "t", "StartupIOWeight": "t", "IODeviceWeight": "a(st)",
    "IOReadBandwidthMax": "a(st)", "IOWriteBandwidthMax": "a(st)",
    "IOReadIOPSMax": "a(st)", "IOWriteIOPSMax": "a(st)", "IODeviceLatencyTargetUSec": "a(st)",
    "MemoryAccounting": "b", "MemoryMin": "t", "MemoryLow": "t", "MemoryHigh": "t",
    "MemoryMax": "t", "MemorySwapMax": "t", "TasksAccounting": "b", "TasksMax": "t",
    "IPAccounting": "b", "DevicePolicy": "s", "DeviceAllow": "a(ss)",
    "ManagedOOMSwap": "s", "ManagedOOMMemoryPressure": "s", "ManagedOOMPreference": "s",
}
_KILL = {
    "KillMode": "s", "KillSignal": "i", "RestartKillSignal": "i", "FinalKillSignal": "i",
    "SendSIGKILL": "b", "SendSIGHUP": "b", "WatchdogSignal": "i",
}
_UNIT = {
    "Description": "s", "Documentation": "as", "CollectMode": "s", "AddRef": "b",
    "DefaultDependencies": "b", "StopWhenUnneeded": "b", "JobTimeoutUSec": "t",
    "OnFailureJobMode": "s", "After": "as", "Before": "as", "Wants": "as", "Requires": "as",
    "BindsTo": "as", "PartOf": "as", "Conflicts": "as",
}
_SERVICE = {
    "Type": "s", "ExitType": "s", "RemainAfterExit": "b", "ExecStart": "a(sasb)",
    "ExecStartPre": "a(sasb)", "ExecStartPost": "a(sasb)", "ExecStopPost": "a(sasb)",
    "RuntimeMaxUSec": "t", "RuntimeRandomizedExtraUSec": "t", "TimeoutStartUSec": "t",
    "TimeoutStopUSec": "t", "TimeoutAbortUSec": "t", "Restart": "s", "RestartUSec": "t",
    "OOMPolicy": "s", "NotifyAccess": "s", "SuccessExitStatus": "(aiai)",
}
_SCOPE = {"PIDs": "au"}
SIGNATURES: Mapping[str, str] = {**_EXEC, **_CGROUP, **_KILL, **_UNIT, **_SERVICE, **_SCOPE}
"""Every property distsvc may set, with its D-Bus signature."""

LIMITS = ("MemoryMax", "CPUQuotaPerSecUSec", "TasksMax", "IOWeight", "RuntimeMaxUSec")
"""The limits `UnitState.limits` reads back (None: not set, i.e. infinity)."""

CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
SYSTEMD_EXIT_STATUSES = (200, 243)
"""The exit statuses systemd's own set-up of a process fails with (systemd.exec(5))."""


class UnitError(distsvc.errors.DistsvcError):
    """The service manager refused or failed a request about a unit."""

    exit_status = distsvc.errors.EXIT_CANNOT_RUN


class UnitExists(UnitError):
    """A unit of that name is loaded already (left by a crashed run, or a name collision)."""


class Unsupported(UnitError):
    """The manager cannot do this for this unit (e.g. freeze it without a cgroup v2 freezer)."""


@dataclasses.dataclass(frozen=True)
class UnitState:
    name: str
    active_state: str
    sub_state: str
    result: str
    main_pid: int
    exec_main_code: int
    exec_main_status: int
    started_at: float | None
    exited_at: float | None
    cpu_ns: int | None
    memory_peak: int | None
    memory_current: int | None
    freezer_state: str
    control_group: str
    limits: Mapping[str, int | None]


# Encoding ---------------------------------------------------------------------------------

Args = list[tuple[int, Any]]


def _split(signature: str) -> list[str]:
    """Complete types of a signature: "sa(st)b" -> ["s", "a(st)", "b"]."""
    types, i = [], 0
    while i < len(signature):
        j = i
        while signature[j] == "a":
            j += 1
        if signature[j] == "(":
            depth = 0
            for k in range(j, len(signature)):
                depth += {"(": 1, ")": -1}.get(signature[k], 0)
                if depth == 0:
                    j = k
                    break
        types.append(signature[i:j + 1])
        i = j + 1
    return types


_INTS = {"y": (0, 2**8 - 1), "n": (-2**15, 2**15 - 1), "q": (0, 2**16 - 1),
         "i": (-2**31, 2**31 - 1), "u": (0, 2**32 - 1), "x": (-2**63, 2**63 - 1),
         "t": (0, UINT64_MAX)}


def encode_value(signature: str, value: object, what: str = "value") -> Args:
    """One value of one complete type as the bus's `call_method` takes it.

    Mirrors pystemd.dbuslib.apply_signature (strings as bytes), with type checks that name
    `what` instead of a TypeError from the C layer, or a silent truncation of an integer."""
    code = signature[0]
    if code == "a":
        if signature == "ay" and isinstance(value, bytes):
            value = list(value)
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise UnitError(f"{what}: expected a list for D-Bus type {signature}, "
                            f"got {value!r}")
        args: Args = [(ord("a"), signature[1:].encode())]
        for item in value:
            args += encode_value(signature[1:], item, what)
        return [*args, (-1, None)]
    if code == "(":
        fields = _split(signature[1:-1])
        if not isinstance(value, tuple | list) or len(value) != len(fields):
            raise UnitError(f"{what}: expected {len(fields)} fields for D-Bus type "
                            f"{signature}, got {value!r}")
        args = [(ord("r"), signature[1:-1].encode())]
        for field, item in zip(fields, value, strict=True):
            args += encode_value(field, item, what)
        return [*args, (-1, None)]
    if code == "b":
        if not isinstance(value, bool):
            raise UnitError(f"{what}: expected true or false, got {value!r}")
        return [(ord(code), value)]
    if code in _INTS:
        if code == "t" and value is None:
            value = UINT64_MAX
        low, high = _INTS[code]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise UnitError(f"{what}: expected an integer from {low} to {high}, got {value!r}")
        return [(ord(code), value)]
    if code in "sog":
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or "\0" in value:
            raise UnitError(f"{what}: expected a string, got {value!r}")
        return [(ord(code), value.encode())]
    raise UnitError(f"{what}: D-Bus type {signature} is not supported here")


def encode_properties(properties: Mapping[str, object]) -> Args:
    """`a(sv)`: the property list of StartTransientUnit, each value encoded by `SIGNATURES`."""
    args: Args = [(ord("a"), b"(sv)")]
    for name, value in properties.items():
        signature = SIGNATURES.get(name)
        if signature is None:
            raise UnitError(f"unknown unit property {name!r} (distsvc does not know its type)")
        args += [(ord("r"), b"sv"), (ord("s"), name.encode()), (ord("v"), signature.encode()),
                 *encode_value(signature, value, name), (-1, None), (-1, None)]
    return [*args, (-1, None)]


def exec_start(argv: Sequence[str]) -> list[tuple[str, list[str], bool]]:
    """ExecStart's value for one command line: the program (an absolute path, or a name
    systemd looks up in its PATH), the argv, and `ignore failure`: False.

    systemd substitutes $NAME and ${NAME} from the unit's environment in ExecStart arguments,
    given over D-Bus too, and turns $$ into $: every $ is doubled so the command gets its
    arguments exactly (`sh -c 'kill -TERM $$'` would otherwise read `kill -TERM $`)."""
    return [(argv[0], [arg.replace("$", "$$") for arg in argv], False)]


# Reading ----------------------------------------------------------------------------------

def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


def _decoded(value: object) -> object:
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, list | tuple):
        return type(value)(_decoded(item) for item in value)
    return value


def _usec_time(value: object) -> float | None:
    return value / 1e6 if isinstance(value, int) and value not in (0, UINT64_MAX) else None


def _counter(value: object) -> int | None:
    return value if isinstance(value, int) and value != UINT64_MAX else None


def state_from(name: str, unit: Mapping[bytes, Any], typed: Mapping[bytes, Any]) -> UnitState:
    """A UnitState from GetAll of the Unit interface and of the unit type's interface (Service,
    Scope, Slice). A property the manager lacks (MemoryPeak before systemd 253...) is None."""
    return UnitState(
        name=name,
        active_state=_text(unit.get(b"ActiveState")),
        sub_state=_text(unit.get(b"SubState")),
        result=_text(typed.get(b"Result")),
        main_pid=int(typed.get(b"MainPID") or 0),
        exec_main_code=int(typed.get(b"ExecMainCode") or 0),
        exec_main_status=int(typed.get(b"ExecMainStatus") or 0),
        started_at=_usec_time(typed.get(b"ExecMainStartTimestamp")),
        exited_at=_usec_time(typed.get(b"ExecMainExitTimestamp")),
        cpu_ns=_counter(typed.get(b"CPUUsageNSec")),
        memory_peak=_counter(typed.get(b"MemoryPeak")),
        memory_current=_counter(typed.get(b"MemoryCurrent")),
        freezer_state=_text(unit.get(b"FreezerState")),
        control_group=_text(typed.get(b"ControlGroup")),
        limits={key: _counter(typed.get(key.encode())) for key in LIMITS
                if key.encode() in typed},
    )


def _type_interface(name: str) -> bytes:
    kind = name.rpartition(".")[2]
    return b"org.freedesktop.systemd1." + kind.capitalize().encode()


# The manager ------------------------------------------------------------------------------

def _bus_error(error: Exception) -> tuple[int, str, str]:
    """(errno, error name, message) of a pystemd DBusError (its errno is negative)."""
    number = getattr(error, "errno", 0)
    return (-number if isinstance(number, int) and number < 0 else int(number or 0),
            _text(getattr(error, "err_name", "")), _text(getattr(error, "err_message", "")))


class Manager:
    """One connection to a service manager; safe to use from several threads (one lock)."""

    def __init__(self, user: bool | None = None) -> None:
        try:
            from pystemd.dbuslib import DBus
        except ImportError as error:
            raise UnitError(f"jobs need pystemd, which is not installed ({error}): "
                            "pip install 'distsvc[systemd]' (which builds it: libsystemd-dev, "
                            "pkg-config and a C compiler), or apt install python3-pystemd"
                            ) from None
        self.user = os.getuid() != 0 if user is None else user
        self._lock = threading.RLock()
        self._removed: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        self._bus = DBus(user_mode=self.user)
        which = "your user's service manager" if self.user else "the system's service manager"
        try:
            self._bus.open()
            self._call(b"org.freedesktop.DBus", b"/org/freedesktop/DBus",
                       b"org.freedesktop.DBus", b"AddMatch",
                       [(ord("s"), b"type='signal',sender='org.freedesktop.systemd1',"
                                   b"interface='org.freedesktop.systemd1.Manager',"
                                   b"member='JobRemoved'")])
            self.version = _text(self._get(MANAGER_PATH, MANAGER_IFACE, b"Version", b"s"))
        except Exception as error:  # pystemd raises its own DBusError family
            raise UnitError(f"cannot reach {which} over D-Bus ({_bus_error(error)[2] or error})"
                            + (": is `systemctl --user` working (lingering, "
                               "DBUS_SESSION_BUS_ADDRESS)?" if self.user else "")) from None

    # -- low level

    def _call(self, destination: bytes, path: bytes, interface: bytes, method: bytes,
              args: Args) -> Any:
        with self._lock:
            return self._bus.call_method(destination, path, interface, method, args).body

    def _manager(self, method: str, args: Args) -> Any:
        return self._call(DESTINATION, MANAGER_PATH, MANAGER_IFACE, method.encode(), args)

    def _get(self, path: bytes, interface: bytes, name: bytes, signature: bytes) -> Any:
        with self._lock:
            return self._bus.get_property(DESTINATION, path, interface, name, signature)

    def _get_all(self, path: bytes, interface: bytes) -> dict[bytes, Any]:
        body = self._call(DESTINATION, path, PROPERTIES_IFACE, b"GetAll",
                          [(ord("s"), interface)])
        return body if isinstance(body, dict) else {}

    def _unit_path(self, name: str) -> bytes | None:
        try:
            return self._manager("GetUnit", [(ord("s"), name.encode())])  # type: ignore[no-any-return]
        except Exception as error:
            if _bus_error(error)[0] == errno.ENOENT or "NoSuchUnit" in type(error).__name__:
                return None
            raise self._error(name, "look up", error) from None

    def _error(self, name: str, doing: str, error: Exception) -> UnitError:
        number, err_name, message = _bus_error(error)
        message = message or str(error)
        if err_name.endswith(".UnitExists") or number == errno.EEXIST:
            scope = "--user " if self.user else ""
            return UnitExists(
                f"unit {name} exists already (left by an earlier run?): "
                f"`systemctl {scope}stop {name}; systemctl {scope}reset-failed {name}` "
                "removes it")
        if "Cannot set property" in message or "Unknown assignment" in message:
            return UnitError(f"cannot {doing} {name}: the service manager (systemd "
                             f"{self.version}) refused a property: {message}")
        return UnitError(f"cannot {doing} {name}: {message}")

    def _wait_job(self, job: bytes, name: str, doing: str) -> str:
        """Wait for JobRemoved of `job`; its result ("done", "failed", "canceled"...).

        Messages are read under the lock; the waiting for more is done without it (a select
        on the bus's fd, at most WAIT_SLICE long, since another thread's call may read our
        signal off the socket and leave it in `_removed` or sd-bus's queue)."""
        deadline = time.monotonic() + JOB_TIMEOUT
        while True:
            with self._lock:
                self._drain()
                if job in self._removed:
                    return self._removed.pop(job)
                fd = self._bus.get_fd()
            left = deadline - time.monotonic()
            if left <= 0:
                raise UnitError(f"cannot {doing} {name}: systemd did not finish the job "
                                f"within {JOB_TIMEOUT:.0f} s")
            distsvc.polling.wait([fd], timeout=min(left, WAIT_SLICE))

    def _drain(self) -> None:
        """Process every message waiting; note the JobRemoved signals (the lock is held)."""
        while True:
            message = self._bus.process()
            if message.is_empty():
                return
            if message.is_signal(MANAGER_IFACE, b"JobRemoved"):
                message.process_reply(False)
                _id, path, _unit, result = message.body
                self._removed[path] = _text(result)
                while len(self._removed) > 1024:  # others' jobs nobody waits for
                    self._removed.popitem(last=False)

    def _start(self, name: str, properties: Mapping[str, object]) -> None:
        args = [(ord("s"), name.encode()), (ord("s"), b"fail"), *encode_properties(properties),
                (ord("a"), b"(sa(sv))"), (-1, None)]
        try:
            job = self._manager("StartTransientUnit", args)
        except Exception as error:
            raise self._error(name, "start", error) from None
        result = self._wait_job(job, name, "start")
        if result != "done" and not self._ran(name):
            raise UnitError(f"cannot start {name}: {self._failure(name, result)}")

    def _ran(self, name: str) -> bool:
        """Whether a service whose start job failed ran its command all the same: one that
        ends at once (`sh -c 'exit 3'`) can fail the unit before a Type=exec start job is
        done. Not when systemd's own set-up failed (exit statuses 200-243: EXIT_CHDIR,
        EXIT_EXEC...) or the unit never got a main process."""
        state = self.state(name)
        if state is None or state.started_at is None:
            return False
        return not (state.result == "exit-code" and state.exec_main_code == CLD_EXITED
                    and SYSTEMD_EXIT_STATUSES[0] <= state.exec_main_status
                    <= SYSTEMD_EXIT_STATUSES[1])

    def _failure(self, name: str, job_result: str) -> str:
        state = self.state(name)
        if state is None:
            return f"its start job ended {job_result!r} and the unit is gone"
        said = f"its start job ended {job_result!r} (unit {state.active_state}"
        if state.result:
            said += f", result {state.result}"
        if state.exec_main_code == CLD_EXITED:
            said += f", exit status {state.exec_main_status}"
            if state.exec_main_status == 203:
                said += ": the command could not be executed"
        return said + ")"

    # -- the API

    def start_service(self, name: str, argv: Sequence[str], properties: Mapping[str, object],
                      description: str) -> None:
        """StartTransientUnit of a service running `argv`, in mode "fail"; returns once the
        start job is done (for Type=exec: once the command was executed)."""
        if not argv:
            raise UnitError(f"cannot start {name}: no command")
        self._start(name, {"Description": description, "ExecStart": exec_start(argv),
                           **properties})

    def start_scope(self, name: str, pids: Sequence[int], properties: Mapping[str, object],
                    description: str) -> None:
        """A transient scope around running processes (ours: the manager moves them)."""
        self._start(name, {"Description": description, "PIDs": list(pids), **properties})

    def start_slice(self, name: str, properties: Mapping[str, object]) -> None:
        """A transient slice, unless one of that name is loaded already."""
        if self.state(name) is not None:
            return
        try:
            self._start(name, properties)
        except UnitExists:
            pass  # another thread or process made it meanwhile

    def state(self, name: str) -> UnitState | None:
        path = self._unit_path(name)
        if path is None:
            return None
        try:
            unit = self._get_all(path, UNIT_IFACE)
            typed = self._get_all(path, _type_interface(name))
        except Exception as error:
            if _bus_error(error)[0] == errno.ENOENT:  # unloaded between the calls
                return None
            raise self._error(name, "read the state of", error) from None
        if _text(unit.get(b"LoadState")) == "not-found":
            return None
        return state_from(name, unit, typed)

    def properties(self, name: str) -> dict[str, object] | None:
        """Every property of the unit as the manager reads it back (the Unit interface's and
        its type's), strings decoded: what a status display or a test compares with what was
        asked. None: no such unit loaded."""
        path = self._unit_path(name)
        if path is None:
            return None
        try:
            found = {**self._get_all(path, UNIT_IFACE),
                     **self._get_all(path, _type_interface(name))}
        except Exception as error:
            raise self._error(name, "read the properties of", error) from None
        return {_text(key): _decoded(value) for key, value in found.items()}

    def kill(self, name: str, signum: int) -> None:
        """Signal every process of the unit (KillUnit, who="all")."""
        try:
            self._manager("KillUnit", [(ord("s"), name.encode()), (ord("s"), b"all"),
                                       (ord("i"), signum)])
        except Exception as error:
            raise self._error(name, "signal", error) from None

    def stop(self, name: str) -> None:
        """StopUnit and wait for it: the unit's KillMode, TimeoutStopUSec and SendSIGKILL
        decide how its processes are ended. Nothing to do for a unit that is not loaded."""
        try:
            job = self._manager("StopUnit", [(ord("s"), name.encode()), (ord("s"), b"replace")])
        except Exception as error:
            if _bus_error(error)[0] == errno.ENOENT or "NoSuchUnit" in type(error).__name__:
                return
            raise self._error(name, "stop", error) from None
        self._wait_job(job, name, "stop")

    def reset_failed(self, name: str) -> None:
        try:
            self._manager("ResetFailedUnit", [(ord("s"), name.encode())])
        except Exception as error:
            if _bus_error(error)[0] == errno.ENOENT or "NoSuchUnit" in type(error).__name__:
                return
            raise self._error(name, "reset", error) from None

    def _freezer(self, method: str, name: str) -> None:
        try:
            self._manager(method, [(ord("s"), name.encode())])
        except Exception as error:
            number, err_name, message = _bus_error(error)
            if (number in (errno.EOPNOTSUPP, errno.ENOTSUP) or "NotSupported" in err_name
                    or "not support" in message or "UnknownMethod" in type(error).__name__):
                raise Unsupported(f"cannot {method[:-4].lower()} {name}: "
                                  f"{message or error}") from None
            raise self._error(name, method[:-4].lower(), error) from None

    def freeze(self, name: str) -> None:
        """FreezeUnit: the unit's cgroup v2 freezer. Unsupported, with systemd's reason, where
        the manager has none (a hybrid or v1 cgroup layout, systemd before 246)."""
        self._freezer("FreezeUnit", name)

    def thaw(self, name: str) -> None:
        self._freezer("ThawUnit", name)

    def processes(self, name: str) -> list[int]:
        """Every process in the unit's cgroup and below (GetUnitProcesses reads the hierarchy
        systemd tracks processes in: the unified one on a hybrid layout)."""
        try:
            found = self._manager("GetUnitProcesses", [(ord("s"), name.encode())])
        except Exception as error:
            if _bus_error(error)[0] == errno.ENOENT or "NoSuchUnit" in type(error).__name__:
                return []
            raise self._error(name, "list the processes of", error) from None
        return sorted(int(pid) for _cgroup, pid, _cmdline in found or [])

    def delegated_controllers(self) -> frozenset[str]:
        """The cgroup controllers this manager can enforce limits with for its units.

        On a pure cgroup v2 layout: those enabled in the manager's own cgroup (for a user
        manager, what user@.service delegates: Debian's `cpu memory pids`). On a hybrid or
        v1 layout the controllers are v1 hierarchies: a user manager gets none of them, the
        system manager those mounted writable (cpu, memory, pids, io as blkio; none in an
        nspawn container, which mounts them read-only)."""
        if _mount_type("/sys/fs/cgroup") == "cgroup2":
            try:
                group = _text(self._get(MANAGER_PATH, MANAGER_IFACE, b"ControlGroup", b"s"))
            except Exception as error:
                raise self._error("the manager", "read the cgroup of", error) from None
            return _controllers(f"/sys/fs/cgroup{group}/cgroup.controllers")
        if self.user:
            return frozenset()
        return frozenset("io" if name == "blkio" else name
                         for name in ("cpu", "memory", "pids", "blkio") if _writable_v1(name))

    def close(self) -> None:
        with self._lock:
            if self._bus is not None:
                self._bus.close()
                self._bus = None


def _mount(path: str) -> tuple[str, str] | None:
    """(file system type, mount options) of what is mounted at `path` (the last mount there,
    which is the one seen), from /proc/self/mountinfo."""
    found = None
    try:
        with open("/proc/self/mountinfo") as lines:
            for line in lines:
                fields = line.split()
                if fields[4] == path:
                    found = (fields[fields.index("-") + 1], fields[5])
    except OSError:
        pass
    return found


def _mount_type(path: str) -> str | None:
    mounted = _mount(path)
    return mounted[0] if mounted else None


def _writable_v1(name: str) -> bool:
    """Whether the v1 hierarchy of controller `name` is mounted, and writable: nspawn mounts
    them read-only in a container, where the manager cannot set any limit with them."""
    mounted = _mount(f"/sys/fs/cgroup/{name}")
    return mounted is not None and mounted[0] == "cgroup" and "rw" in mounted[1].split(",")


def _controllers(path: str) -> frozenset[str]:
    try:
        with open(path) as file:
            return frozenset(file.read().split())
    except OSError:
        return frozenset()
