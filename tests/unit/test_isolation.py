"""Job isolation's plan (properties and prefix per kind) and the probe's verdict, as plain
functions; pidinit run directly (root here: no user namespace needed, as on a system manager).
What a real manager makes of them is tested in test_units_e2e.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import distsvc.errors
import helpers
import proc
from distsvc.jobs import isolation

# Root here makes the namespaces directly, as on a system manager; another user needs pidinit
# to make a user namespace first, as on a user manager.
USERNS = [] if os.geteuid() == 0 else ["--user-namespace"]


def test_every_kind_on_a_user_manager() -> None:
    plan = isolation.plan(isolation.KINDS, user_manager=True)
    assert plan.properties == {"PrivateMounts": True, "PrivateTmp": True,
                               "PrivateNetwork": True, "PrivateUsers": True}
    assert plan.argv_prefix == [*isolation.pidinit_command(),
                                "--user-namespace", "--"]


def test_every_kind_on_the_system_manager() -> None:
    plan = isolation.plan(isolation.KINDS, user_manager=False)
    assert plan.properties == {"PrivateMounts": True, "PrivateTmp": True,
                               "ProtectProc": "invisible", "PrivateNetwork": True}
    assert plan.argv_prefix == [*isolation.pidinit_command(), "--"]


@pytest.mark.parametrize(("kinds", "properties", "prefixed"), [
    ([], {}, False),
    (["pid"], {}, True),  # no PrivateUsers: pidinit makes its own user namespace
    (["mount"], {"PrivateMounts": True, "PrivateTmp": True, "PrivateUsers": True}, False),
    (["network"], {"PrivateNetwork": True, "PrivateUsers": True}, False),
])
def test_each_kind_alone(kinds: list[str], properties: dict[str, object],
                         prefixed: bool) -> None:
    plan = isolation.plan(kinds, user_manager=True)
    assert plan.properties == properties
    assert bool(plan.argv_prefix) == prefixed


def test_an_unknown_kind_is_a_usage_error() -> None:
    with pytest.raises(distsvc.errors.UsageError, match="unknown isolation ipc"):
        isolation.plan(["pid", "ipc"], user_manager=True)


OUTSIDE = {"pid": "pid:[1]", "mnt": "mnt:[2]", "net": "net:[3]"}
GOOD = {"pid_ns": "pid:[11]", "mnt_ns": "mnt:[12]", "net_ns": "net:[13]", "self": "2",
        "procs": "3", "tmp": "5:99", "tmp_entries": "0", "tmp_writable": "yes",
        "ifaces": "lo ", "end": "yes"}


def test_judge_all_working() -> None:
    assert isolation.judge(GOOD, OUTSIDE, "5:42", None) == dict.fromkeys(isolation.KINDS)


@pytest.mark.parametrize(("change", "kind", "said"), [
    ({"pid_ns": "pid:[1]"}, "pid", "manager's PID namespace"),
    ({"procs": "40"}, "pid", "shows 40 processes"),
    ({"mnt_ns": "mnt:[2]"}, "mount", "manager's mount namespace"),
    ({"tmp": "5:42"}, "mount", "not a private"),
    ({"tmp_entries": "3"}, "mount", "not a private"),
    ({"net_ns": "net:[3]"}, "network", "manager's network namespace"),
    ({"ifaces": "lo eth0 "}, "network", "'lo eth0 '"),
])
def test_judge_names_what_the_probe_did_not_see(change: dict[str, str], kind: str,
                                                said: str) -> None:
    verdict = isolation.judge({**GOOD, **change}, OUTSIDE, "5:42", None)
    assert verdict[kind] is not None and said in verdict[kind]
    assert all(verdict[other] is None for other in isolation.KINDS if other != kind)


def test_judge_a_failed_probe_unit_fails_every_kind() -> None:
    verdict = isolation.judge({}, OUTSIDE, "5:42", "the probe unit failed (exit-code, 218)")
    assert verdict == dict.fromkeys(isolation.KINDS, "the probe unit failed (exit-code, 218)")


def pidinit(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", "-S", isolation.PIDINIT, *USERNS, "--",
                           *command], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("command", "returncode"), [
    ("kill -TERM $$", -15), ("exit 3", 3), ("kill -KILL $$", -9), ("true", 0),
    ("kill -INT $$", -2)])
def test_pidinit_ends_as_its_command_did(command: str, returncode: int) -> None:
    assert pidinit("sh", "-c", command).returncode == returncode


def test_pidinit_shows_only_the_namespace_in_ps() -> None:
    done = pidinit("sh", "-c", "echo $$; ps -e -o pid=,comm=")
    lines = done.stdout.split("\n")
    assert lines[0] == "2"
    assert [line.split()[0] for line in lines[1:] if line] == ["1", "2", "3"]


def test_pidinit_says_a_missing_command_like_a_shell() -> None:
    done = pidinit("no-such-command-here")
    assert done.returncode == 127
    assert done.stderr == "no-such-command-here: No such file or directory\n"


def test_pidinit_without_a_command_is_usage() -> None:
    done = subprocess.run([sys.executable, "-I", "-S", isolation.PIDINIT], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("usage:")


def test_pidinit_ignores_signals_to_itself_and_dies_whole_with_sigkill() -> None:
    """systemd signals every process of the unit, so the command gets its signals directly;
    pidinit itself lets only SIGKILL end it, and then the namespace goes with it."""
    outer = subprocess.Popen([sys.executable, "-I", "-S", isolation.PIDINIT, *USERNS, "--",
                              "sleep", "1000"])
    try:
        tree = helpers.wait_for(lambda: len(found := proc.descendants(outer.pid)) == 2
                                and found, 30, "the init and the command")
        os.kill(outer.pid, signal.SIGTERM)
        time.sleep(0.3)  # a moment for a wrong reaction; nothing is timed
        assert outer.poll() is None
        os.kill(outer.pid, signal.SIGKILL)
        assert outer.wait(timeout=30) == -signal.SIGKILL
        helpers.wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in tree),
                         30, "the namespace's processes to go")
    finally:
        outer.kill()
        outer.wait()
