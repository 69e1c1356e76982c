"""How the units adapter encodes unit properties for StartTransientUnit (no bus needed).

Each property distsvc sets is checked to encode to its systemd signature, and every encoding
is compared with what pystemd's own encoder (`apply_signature`, the one its `call_method`
callers use) makes of the same value, so the form fed to the bus is the one it understands.
That the manager accepts each property and reads it back is tested in test_units_e2e.py.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from typing import Any

import pytest

from distsvc.adapters.systemd import units
from distsvc.adapters.systemd.units import UINT64_MAX, UnitError, encode_properties

# Property -> (value as callers pass it, systemd's signature). The ones pystemd's table lacks
# are marked; every one here must be in the adapter's table with that signature.
CASES: dict[str, tuple[object, str]] = {
    "WorkingDirectory": ("/x", "s"),
    "Environment": (["A=1", "B=two words"], "as"),
    "StandardOutputFileToAppend": ("/p/stdout", "s"),
    "StandardErrorFileToAppend": ("/p/stderr", "s"),
    "RemainAfterExit": (True, "b"),
    "Slice": ("distsvc.slice", "s"),
    "MemoryMax": (536870912, "t"),
    "CPUQuotaPerSecUSec": (1500000, "t"),
    "TasksMax": (64, "t"),
    "IOWeight": (100, "t"),  # not in pystemd's table
    "IOReadBandwidthMax": ([("/home", 10485760)], "a(st)"),  # not in pystemd's table
    "IOWriteBandwidthMax": ([("/home", 1048576), ("/var", 2)], "a(st)"),  # not in pystemd's
    "RuntimeMaxUSec": (600000000, "t"),
    "PrivateUsers": (True, "b"),
    "PrivateNetwork": (True, "b"),
    "PrivateTmp": (True, "b"),
    "PrivateMounts": (True, "b"),
    "PrivatePIDs": (True, "b"),  # not in pystemd's table; systemd 257+
    "ProtectProc": ("invisible", "s"),  # not in pystemd's table
    "ProcSubset": ("pid", "s"),  # not in pystemd's table
    "KillMode": ("control-group", "s"),
    "TimeoutStopUSec": (10000000, "t"),
    "SendSIGKILL": (True, "b"),
    "Type": ("exec", "s"),
    "CollectMode": ("inactive-or-failed", "s"),  # not in pystemd's table
    "ExecStart": ([("sh", ["sh", "-c", "exit 3"], False)], "a(sasb)"),
    "PIDs": ([1234, 5678], "au"),  # scopes; not in pystemd's table
    "Description": ("job 7: sleep 1", "s"),
    "TimeoutStartUSec": (5000000, "t"),
    "MemoryHigh": (None, "t"),  # None: infinity
    "CPUWeight": (100, "t"),  # not in pystemd's table
    "UMask": (0o077, "u"),  # not in pystemd's table
    "OOMPolicy": ("stop", "s"),  # not in pystemd's table
    "StandardInput": ("null", "s"),
    "Nice": (-5, "i"),
}


def pystemd_encoding(signature: str, value: object) -> list[tuple[int, Any]]:
    """pystemd's own encoder, with strings as the bytes its C layer turns them into."""
    dbuslib = importlib.import_module("pystemd.dbuslib")

    def as_bytes(item: object) -> object:
        if isinstance(item, str):
            return item.encode()
        if isinstance(item, list):
            return [as_bytes(x) for x in item]
        if isinstance(item, tuple):
            return tuple(as_bytes(x) for x in item)
        return item

    encoded = dbuslib.apply_signature(signature.encode(), [as_bytes(value)])
    return [(code, value.encode() if isinstance(value, str) else value)
            for code, value in encoded]


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_property_encodes_with_systemds_signature(name: str) -> None:
    value, signature = CASES[name]
    assert units.SIGNATURES[name] == signature
    args = encode_properties({name: value})
    # a(sv) [ (s name, v<signature> value) ]
    assert args[:4] == [(ord("a"), b"(sv)"), (ord("r"), b"sv"), (ord("s"), name.encode()),
                        (ord("v"), signature.encode())]
    assert args[-3:] == [(-1, None), (-1, None), (-1, None)]
    body = args[4:-3]
    if value is None:
        value = UINT64_MAX
    assert body == pystemd_encoding(signature, value)


def test_values_are_encoded_as_the_bus_takes_them() -> None:
    assert units.encode_value("a(st)", [("/home", 10)]) == [
        (ord("a"), b"(st)"), (ord("r"), b"st"), (ord("s"), b"/home"), (ord("t"), 10),
        (-1, None), (-1, None)]
    assert units.encode_value("a(sasb)", [("sh", ["sh", "-c"], False)]) == [
        (ord("a"), b"(sasb)"), (ord("r"), b"sasb"), (ord("s"), b"sh"),
        (ord("a"), b"s"), (ord("s"), b"sh"), (ord("s"), b"-c"), (-1, None),
        (ord("b"), False), (-1, None), (-1, None)]
    assert units.encode_value("t", None) == [(ord("t"), UINT64_MAX)]
    assert units.encode_value("ay", b"\x00\xff") == [
        (ord("a"), b"y"), (ord("y"), 0), (ord("y"), 255), (-1, None)]


def test_several_properties_go_in_one_array_in_order() -> None:
    args = encode_properties({"TasksMax": 64, "PrivateTmp": True})
    names = [value for code, value in args if code == ord("s")]
    assert names == [b"TasksMax", b"PrivateTmp"]
    assert [code for code, _ in args].count(-1) == 2 * 2 + 1


@pytest.mark.parametrize(("name", "value", "said"), [
    ("TasksMax", -1, "TasksMax: expected an integer from 0 to"),
    ("TasksMax", 2**64, "TasksMax: expected an integer"),
    ("TasksMax", True, "TasksMax: expected an integer"),
    ("TasksMax", "64", "TasksMax: expected an integer"),
    ("Nice", 2**31, "Nice: expected an integer"),
    ("PrivateTmp", 1, "PrivateTmp: expected true or false"),
    ("Environment", "A=1", "Environment: expected a list"),
    ("WorkingDirectory", b"/x", "WorkingDirectory: expected a string"),
    ("WorkingDirectory", "/a\0b", "WorkingDirectory: expected a string"),
    ("IOReadBandwidthMax", [("/home",)], "IOReadBandwidthMax: expected 2 fields"),
    ("PIDs", [2**32], "PIDs: expected an integer"),
])
def test_a_bad_value_is_one_line_naming_the_property(name: str, value: object,
                                                     said: str) -> None:
    with pytest.raises(UnitError) as caught:
        encode_properties({name: value})
    assert said in caught.value.message
    assert "\n" not in caught.value.message


def test_an_unknown_property_is_refused_by_name() -> None:
    with pytest.raises(UnitError, match="unknown unit property 'MemoryMaxx'"):
        encode_properties({"MemoryMaxx": 1})


def test_every_signature_in_the_table_is_well_formed() -> None:
    for name, signature in units.SIGNATURES.items():
        assert units._split(signature) == [signature], name


def test_importing_the_adapter_does_not_load_pystemd() -> None:
    code = ("import sys, distsvc.adapters.systemd, distsvc.adapters.systemd.units; "
            "print('pystemd' in sys.modules or 'pystemd.dbuslib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


def test_state_reads_missing_accounting_as_none() -> None:
    unit = {b"ActiveState": b"active", b"SubState": b"exited", b"FreezerState": b"running"}
    typed = {b"Result": b"success", b"MainPID": 0, b"ExecMainCode": 1, b"ExecMainStatus": 0,
             b"ExecMainStartTimestamp": 1_700_000_000_000_000, b"ExecMainExitTimestamp": 0,
             b"CPUUsageNSec": UINT64_MAX, b"MemoryCurrent": UINT64_MAX, b"MemoryMax": UINT64_MAX,
             b"TasksMax": 64, b"ControlGroup": b"/x"}
    state = units.state_from("a.service", unit, typed)
    assert state.started_at == 1_700_000_000.0
    assert state.exited_at is None
    assert state.cpu_ns is None and state.memory_current is None
    assert state.memory_peak is None  # not there at all (systemd 252)
    assert state.limits == {"MemoryMax": None, "TasksMax": 64}
    assert (state.active_state, state.sub_state, state.result) == ("active", "exited", "success")


def test_exec_start_doubles_dollars_so_systemd_passes_arguments_unchanged() -> None:
    assert units.exec_start(["sh", "-c", "kill -TERM $$; echo ${HOME} $X"]) == [
        ("sh", ["sh", "-c", "kill -TERM $$$$; echo $${HOME} $$X"], False)]
