"""Tests of the systemd container test bed (tests/container.py) itself: real boots, no mocks."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import container
import helpers


@pytest.fixture(scope="module")
def ct() -> Iterator[container.Container]:
    reason = container.can_boot()
    if reason:
        pytest.skip(reason)
    with container.booted() as c:
        yield c
    assert container.leftovers(c) == []
    assert host_state(c) == []


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def host_state(c: container.Container) -> list[str]:
    """The traces of `c` on the host, looked for independently of `container.leftovers`."""
    traces = []
    nspawns = subprocess.run(["pgrep", "-a", "systemd-nspawn"], capture_output=True, text=True)
    traces += [line for line in nspawns.stdout.splitlines() if c.name in line]
    traces += [line for line in Path("/proc/mounts").read_text().splitlines()
               if " overlay " in line and str(c.workdir) in line]
    traces += [str(d) for root in container.cgroup_roots() for d in root.glob(c.workdir.name)]
    traces += [str(c.workdir)] if c.workdir.exists() else []
    return traces


def test_teardown_leaves_nothing_even_when_the_test_fails() -> None:
    reason = container.can_boot()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="the test failed"), container.booted() as c:
        booted = time.monotonic()
        assert host_state(c), "a running container leaves traces"
        assert len(c.cgroups) == len(container.cgroup_roots()) >= 1
        # Commands still running at teardown, one of them stopped: an nsenter that stopped
        # itself along with its command once kept the container from dying.
        c.popen_as_user(["sleep", "300"], stdout=subprocess.DEVNULL)
        stopped = c.popen(["sleep", "301"], stdout=subprocess.DEVNULL)
        stopped.send_signal(signal.SIGSTOP)
        # And one started right now, whose nsenter forks it into the container only during
        # the teardown: once found too late, it cost the shutdown 10 s (1 run in 2).
        c.popen_as_user(["sleep", "302"], stdout=subprocess.DEVNULL)
        raise RuntimeError("the test failed")
    took = time.monotonic() - booted
    assert host_state(c) == []
    assert container.leftovers(c) == []
    assert stopped.wait(5) == -signal.SIGKILL
    print(f"boot {booted - started:.2f} s, teardown {took:.2f} s")
    assert took < 10, "the container should power off at once, not after a timeout"


def test_systemd_is_pid_1(ct: container.Container) -> None:
    assert ct.run(["ps", "-p", "1", "-o", "comm="]).stdout.strip() == "systemd"
    assert ct.system_state in ("running", "degraded"), ct.debug_report()
    # ct.pid is that process as seen from the host.
    status = Path(f"/proc/{ct.pid}/status").read_text().splitlines()
    assert next(line for line in status if line.startswith("NSpid:")).split()[1:] \
        == [str(ct.pid), "1"]
    assert Path(f"/proc/{ct.pid}/comm").read_text().strip() == "systemd"
    # A private network: loopback only.
    links = ct.run(["ls", "/sys/class/net"]).stdout.split()
    assert links == ["lo"]


def test_the_users_manager_answers(ct: container.Container) -> None:
    env = ct.run_as_user(["systemctl", "--user", "show-environment"]).stdout.splitlines()
    assert f"XDG_RUNTIME_DIR=/run/user/{ct.uid}" in env
    assert f"HOME={ct.home}" in env
    assert ct.run_as_user(["id", "-u"]).stdout.strip() == str(ct.uid)
    assert ct.run_as_user(["id", "-g"]).stdout.strip() == str(ct.gid)
    assert ct.run_as_user(["pwd"]).stdout.strip() == ct.home == f"/home/{ct.user}"
    assert ct.run(["loginctl", "show-user", ct.user, "-p", "Linger"]).stdout.strip() \
        == "Linger=yes"


def test_the_users_environment_has_the_venv(ct: container.Container) -> None:
    printed = ct.run_as_user(["env"], env={"EXTRA": "1"}).stdout.splitlines()
    env = dict(line.split("=", 1) for line in printed)
    assert env["USER"] == ct.user
    assert env["DBUS_SESSION_BUS_ADDRESS"] == f"unix:path=/run/user/{ct.uid}/bus"
    assert env["PATH"].split(":")[0] == str(container.VENV_BIN)
    assert env["EXTRA"] == "1"
    where = ct.run_as_user(["python3", "-c", "import distsvc, sys; print(sys.prefix)"])
    assert where.stdout.strip() == str(container.VENV_BIN.parent)


def test_a_transient_user_unit_runs(ct: container.Container) -> None:
    unit = unique("bed-transient")
    done = ct.run_as_user(["systemd-run", "--user", f"--unit={unit}", "--wait", "true"])
    assert "Finished with result: success" in done.stderr
    failed = ct.run_as_user(["systemd-run", "--user", f"--unit={unit}-2", "--wait", "false"],
                            check=False)
    assert failed.returncode != 0


def test_a_user_socket_activates_its_service(ct: container.Container) -> None:
    name = unique("bedecho")
    units = f"{ct.home}/.config/systemd/user"
    # Two sockets: one in the runtime directory (a tmpfs inside), one in the home (overlay).
    ct.write_file(f"{units}/{name}.socket",
                  "[Socket]\n"
                  f"ListenStream=%t/{name}.sock\n"
                  f"ListenStream=%h/{name}.sock\n"
                  "Accept=yes\n", owner=ct.user)
    ct.write_file(f"{units}/{name}@.service",
                  "[Service]\n"
                  "ExecStart=/bin/cat\n"
                  "StandardInput=socket\n"
                  "StandardOutput=socket\n"
                  "StandardError=journal\n", owner=ct.user)
    ct.run_as_user(["systemctl", "--user", "daemon-reload"])
    ct.run_as_user(["systemctl", "--user", "start", f"{name}.socket"])

    in_runtime = f"{ct.runtime_dir()}/{name}.sock"
    # The overlay path does not show /run (a tmpfs of the container's own)...
    assert not (ct.root / in_runtime.lstrip("/")).exists()
    # ... /proc/PID/root does, and the socket is connectable from the host through it,
    assert helpers.unix_exchange(ct.host_path(in_runtime), b"ping 1\n") == b"ping 1\n"
    # and a socket on the overlay is connectable through the overlay path too.
    on_overlay = ct.root / ct.home.lstrip("/") / f"{name}.sock"
    assert helpers.unix_exchange(on_overlay, b"ping 2\n") == b"ping 2\n"
    # From inside, as the user.
    client = ("import socket, sys\n"
              "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
              "s.sendall(b'ping 3\\n'); s.shutdown(socket.SHUT_WR)\n"
              "print(s.makefile().read(), end='')\n")
    assert ct.run_as_user(["python3", "-c", client, in_runtime]).stdout == "ping 3\n"

    # The user manager logged the start of the three instances, with their unit's name.
    # (Not what cat might print: see test_the_journal_query_returns_fields.)
    entries = ct.wait_for_journal(f"{name}@*.service", "Started", count=3)
    started = [e for e in entries if e["MESSAGE"].startswith("Started")]
    assert len(started) == 3, [e.get("MESSAGE") for e in entries]
    for entry in started:
        assert entry["USER_UNIT"].startswith(f"{name}@")
        assert entry["_UID"] == str(ct.uid)
        assert entry["_SYSTEMD_USER_UNIT"] == "init.scope"  # the manager's own
        assert entry["JOB_RESULT"] == "done"
    ct.run_as_user(["systemctl", "--user", "stop", f"{name}.socket"])


def test_the_journal_query_returns_fields(ct: container.Container) -> None:
    unit = unique("bed-journal")
    # Not "echo 42 is...": the manager's "Started ..." line quotes the command. And alive
    # for a while: journald tells the unit of a line by the cgroup of the process that wrote
    # it, so a line whose writer exited at once may come without _SYSTEMD_USER_UNIT (about 1
    # in 5 here), and `journalctl --user -u` does not find it.
    ct.run_as_user(["systemd-run", "--user", f"--unit={unit}",
                    "sh", "-c", "echo $((6 * 7)) is the answer; exec sleep 60"])
    entries = ct.wait_for_journal(f"{unit}.service", "42 is the answer")
    ct.run_as_user(["systemctl", "--user", "stop", unit])
    line = next(e for e in entries if e["MESSAGE"] == "42 is the answer")
    assert line["_SYSTEMD_USER_UNIT"] == f"{unit}.service"
    assert line["_TRANSPORT"] == "stdout"
    assert line["PRIORITY"] == "6"
    system = ct.journal("systemd-logind.service", user=False)
    assert system and all("MESSAGE" in e and "__REALTIME_TIMESTAMP" in e for e in system)
    plain = ct.journal(f"{unit}.service", output="cat")
    assert {"MESSAGE": "42 is the answer"} in plain


def test_other_users(ct: container.Container) -> None:
    mallory = unique("dsvcmal")
    uid, _ = ct.add_user(mallory)
    assert uid not in (0, ct.uid) and ct.run_as_user(["id", "-u"], user=mallory).stdout \
        == f"{uid}\n"
    assert ct.users[mallory].home == f"/home/{mallory}"
    # Not lingering: no manager; and the test user's runtime directory is closed to it.
    assert not ct.host_path(f"/run/user/{uid}").exists()
    peek = ct.run_as_user(["ls", ct.runtime_dir()], user=mallory, check=False)
    assert peek.returncode != 0 and "Permission denied" in peek.stderr
    other = unique("dsvcoth")
    ct.add_user(other, linger=True)
    env = ct.run_as_user(["systemctl", "--user", "show-environment"], user=other).stdout
    assert f"USER={other}" in env
    assert ct.failed_units(other) == []
    with pytest.raises(ValueError, match="already exists"):
        ct.add_user(other)


def test_write_and_read_files(ct: container.Container) -> None:
    name = unique("bedfile")
    path = f"{ct.home}/{name}/deeper/file.txt"
    host = ct.write_file(path, "some text\n", owner=ct.user, mode=0o600)
    assert host == ct.host_path(path)
    on_overlay = ct.root / path.lstrip("/")
    assert on_overlay.read_text() == "some text\n"
    assert (on_overlay.stat().st_uid, on_overlay.stat().st_gid) == (ct.uid, ct.gid)
    assert on_overlay.stat().st_mode & 0o777 == 0o600
    assert (ct.root / f"{ct.home.lstrip('/')}/{name}").stat().st_uid == ct.uid
    assert ct.run_as_user(["cat", path]).stdout == "some text\n"
    assert ct.read_file(path) == "some text\n"
    # Written inside, in the upper layer only: the host's own tree is untouched.
    assert not Path(path).exists()
    # /tmp inside is the container's own tmpfs: seen through host_path, not through root.
    ct.write_file(f"/tmp/{name}", b"\x00bytes")
    assert ct.host_path(f"/tmp/{name}").read_bytes() == b"\x00bytes"
    assert not (ct.root / f"tmp/{name}").exists()
    assert not Path(f"/tmp/{name}").exists()


def test_commands_fail_and_time_out_visibly(ct: container.Container) -> None:
    with pytest.raises(container.CommandFailed) as failed:
        ct.run(["sh", "-c", "echo to stdout; echo to stderr >&2; exit 3"])
    assert failed.value.returncode == 3
    assert "to stdout" in str(failed.value) and "to stderr" in str(failed.value)
    assert ct.run(["sh", "-c", "exit 4"], check=False).returncode == 4
    assert ct.run(["cat"], input=b"\x01\x02").stdout == b"\x01\x02"
    with pytest.raises(subprocess.TimeoutExpired):
        ct.run_as_user(["sleep", "31.5"], timeout=0.5)
    # The command itself was killed, not just the nsenter that started it.
    left = ct.run(["pgrep", "-f", "sleep 31.5"], check=False)
    assert left.returncode == 1, left.stdout


def test_popen_signals_reach_the_command(ct: container.Container) -> None:
    proc = ct.popen_as_user(["sleep", "60"], stdout=subprocess.PIPE)
    inside = proc.pid_inside()
    assert inside is not None and inside > 1
    inner = proc.inner_pid()
    assert inner is not None
    deadline = time.monotonic() + 5  # nsenter's child may not have become sleep yet
    while Path(f"/proc/{inner}/comm").read_text() != "sleep\n" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert f"Uid:\t{ct.uid}\t" in Path(f"/proc/{inner}/status").read_text()
    proc.terminate()
    assert proc.wait(5) == -signal.SIGTERM
    assert proc.stdout is not None and proc.stdout.read() == b""
    proc.stdout.close()
    assert not os.path.exists(f"/proc/{inner}")


def test_debug_report(ct: container.Container) -> None:
    report = ct.debug_report()
    assert report.startswith(f"system: {ct.system_state}; failed: ")
    assert f"user {ct.user}: " in report
    assert "--- console (end)" in report
