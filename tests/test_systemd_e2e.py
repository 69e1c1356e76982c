"""distsvc under a real systemd user manager, in a throwaway container (tests/container.py).

The units are installed as the Debian package installs them (/usr/lib/systemd/user, the
program as /usr/bin/distsvc), the test user enables them with systemctl --user, and an sshd
inside the container (on its private loopback, 127.0.0.2) is the host they measure and use.
"""

from __future__ import annotations

import contextlib
import json
import random
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import container
import distsvc.protocol

PROJECT = Path(__file__).resolve().parents[1]
UNITS = ("distsvc.socket", "distsvc.service", "distsvc-scan.service", "distsvc-scan.timer")
SSH_ADDRESS, SSH_PORT = "127.0.0.2", 2222


def systemctl(c: container.Container, *args: str, check: bool = True) -> str:
    return c.run_as_user(["systemctl", "--user", *args], check=check).stdout.strip()


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)
    return value


def install(c: container.Container) -> None:
    """What the package does, plus an sshd and the user's SSH client set-up."""
    c.run(["ln", "-sf", str(container.VENV_BIN / "distsvc"), "/usr/bin/distsvc"])
    for unit in UNITS:
        c.write_file(f"/usr/lib/systemd/user/{unit}", (PROJECT / "systemd" / unit).read_text())
    # sshd on the container's own loopback, for the test user only.
    c.run(["mkdir", "-p", "/etc/distsvc-test", "/run/sshd"])
    c.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", "/etc/distsvc-test/host"])
    home = c.home
    # A locked account ("!") may not log in with keys when PAM is off; "*" has no password.
    c.run(["usermod", "-p", "*", c.user])
    c.run_as_user(["mkdir", "-p", "-m", "700", f"{home}/.ssh"])
    c.run_as_user(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{home}/.ssh/id_ed25519"])
    c.run_as_user(["cp", f"{home}/.ssh/id_ed25519.pub", f"{home}/.ssh/authorized_keys"])
    host_key = " ".join(c.read_file("/etc/distsvc-test/host.pub").split()[:2])
    c.write_file(f"{home}/.ssh/known_hosts", f"[{SSH_ADDRESS}]:{SSH_PORT} {host_key}\n",
                 owner=c.user, mode=0o600)
    c.write_file("/etc/distsvc-test/sshd_config", f"""\
ListenAddress {SSH_ADDRESS}:{SSH_PORT}
HostKey /etc/distsvc-test/host
PidFile none
AllowUsers {c.user}
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
LogLevel ERROR
""")
    c.run(["systemd-run", "--unit=test-sshd", "/usr/sbin/sshd", "-D", "-e",
           "-f", "/etc/distsvc-test/sshd_config"])
    c.write_file(f"{home}/.config/distsvc/config.toml",
                 f'[[hosts]]\nname = "h1"\naddress = "{SSH_ADDRESS}"\nport = {SSH_PORT}\n',
                 owner=c.user)
    systemctl(c, "daemon-reload")


@pytest.fixture(scope="module")
def box() -> Iterator[container.Container]:
    reason = container.can_boot()
    if reason:
        pytest.skip(reason)
    with container.booted() as c:
        install(c)
        yield c


def state_file(c: container.Container) -> dict[str, Any] | None:
    path = c.host_path(f"{c.runtime_dir()}/distsvc/state.json")
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, ValueError):
        return None


EXCHANGE = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(15)
s.connect(sys.argv[1])
s.sendall(bytes.fromhex(sys.stdin.read()))
s.shutdown(socket.SHUT_WR)
chunks = []
while chunk := s.recv(65536):
    chunks.append(chunk)
print(b"".join(chunks).hex())
"""


def raw_exchange(c: container.Container, data: bytes, user: str | None = None) -> bytes:
    """Raw bytes to the daemon's socket, from a process of `user` (default: its own user)."""
    result = c.run_as_user(["python3", "-c", EXCHANGE, f"{c.runtime_dir()}/distsvc/distsvc.sock"],
                           user=user, input=data.hex())
    return bytes.fromhex(result.stdout.strip())


def test_units_pass_systemd_analyze_verify(box: container.Container) -> None:
    result = box.run_as_user(
        ["systemd-analyze", "--user", "verify", *(f"/usr/lib/systemd/user/{u}" for u in UNITS)],
        check=False)
    assert result.returncode == 0, result.stderr


def test_socket_activates_the_service_on_first_connection(box: container.Container) -> None:
    systemctl(box, "enable", "--now", "distsvc.socket")
    assert systemctl(box, "is-active", "distsvc.socket") == "active"
    assert systemctl(box, "is-active", "distsvc.service", check=False) == "inactive"
    sock = box.host_path(f"{box.runtime_dir()}/distsvc/distsvc.sock")
    directory = box.host_path(f"{box.runtime_dir()}/distsvc")
    assert sock.lstat().st_mode & 0o777 == 0o600 and directory.stat().st_mode & 0o777 == 0o700
    status = box.run_as_user(["distsvc", "status", "--json"])
    answer = json.loads(status.stdout)
    assert answer["running"] and answer["daemon_version"]
    assert systemctl(box, "is-active", "distsvc.service") == "active"
    assert int(systemctl(box, "show", "-p", "MainPID", "--value", "distsvc.service")) > 0
    # Ready was notified, the watchdog is armed, the status line is set.
    assert systemctl(box, "show", "-p", "WatchdogUSec", "--value", "distsvc.service") == "30s"
    assert "serving" in systemctl(box, "show", "-p", "StatusText", "--value", "distsvc.service")
    box.wait_for_journal("distsvc.service", "daemon ready")


def test_commands_run_through_the_activated_daemon(box: container.Container) -> None:
    systemctl(box, "start", "distsvc.socket")
    result = box.run_as_user(["distsvc-run", "sh", "-c", "echo out; echo err >&2; exit 3"],
                             check=False)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    status = json.loads(box.run_as_user(["distsvc", "status", "--json"]).stdout)
    assert status["connections"] == 1  # the warm connection the command used
    entries = box.wait_for_journal("distsvc.service", "job ended")
    ended = [e for e in entries if e.get("MESSAGE") == "job ended"]
    assert ended[-1]["STATUS"] == "3" and ended[-1]["JOB"]
    started = [e for e in entries if e.get("MESSAGE") == "job started"]
    assert started[-1]["HOST"] == "h1" and started[-1]["SYSLOG_IDENTIFIER"] == "distsvc"


def test_a_second_daemon_exits_by_itself(box: container.Container) -> None:
    box.run_as_user(["distsvc", "status"])  # the activated one is running
    second = box.run_as_user(["distsvc", "daemon"], env={"DISTSVC_LOG": "info"}, timeout=30)
    assert second.returncode == 0 and "another daemon is serving" in second.stderr
    assert systemctl(box, "is-active", "distsvc.service") == "active"


def test_the_timer_runs_the_scanner_and_the_state_file_appears(
        box: container.Container) -> None:
    systemctl(box, "enable", "--now", "distsvc-scan.timer")
    assert "distsvc-scan.timer" in systemctl(box, "list-timers", "--all")
    since = time.time()

    def fresh() -> bool:
        state = state_file(box)
        entry = (state or {}).get("hosts", {}).get("h1", {})
        return entry.get("state") == "up" and (entry.get("measured_at") or 0) >= since

    # The timer's first pass comes 10-15 s after it starts (OnActiveSec=10s + delay).
    wait_until(fresh, 60, "a fresh measurement of h1 from the timer")
    state = state_file(box)
    assert state is not None and state["version"] == 1
    assert state["hosts"]["h1"]["measurement"]["cpus"] >= 1
    assert systemctl(box, "show", "-p", "Result", "--value", "distsvc-scan.service") == "success"
    # The daemon is running (earlier tests woke it): the pass went through its connections.
    done = box.wait_for_journal("distsvc-scan.service", "scan pass done")
    assert [e for e in done if e.get("MESSAGE") == "scan pass done"][-1]["THROUGH"] == "daemon"
    entries = box.wait_for_journal("distsvc.service", "host measured")
    measured = [e for e in entries if e.get("MESSAGE") == "host measured"]
    assert measured[-1]["HOST"] == "h1" and float(measured[-1]["LOAD"]) >= 0


def test_a_scan_does_not_wake_a_stopped_daemon(box: container.Container) -> None:
    systemctl(box, "stop", "distsvc.service")
    systemctl(box, "start", "distsvc.socket")
    wait_until(lambda: systemctl(box, "is-active", "distsvc-scan.service", check=False)
               == "inactive", 30, "the timer's pass to finish")
    box.run(["rm", f"{box.runtime_dir()}/distsvc/state.json"])  # so that h1 is due again
    systemctl(box, "start", "distsvc-scan.service")
    assert systemctl(box, "is-active", "distsvc.service", check=False) == "inactive"
    entries = box.wait_for_journal("distsvc-scan.service", "host measured")
    measured = [e for e in entries if e.get("MESSAGE") == "host measured"]
    assert measured[-1]["HOST"] == "h1"
    done = [e for e in box.journal("distsvc-scan.service") if e.get("MESSAGE") == "scan pass done"]
    assert done[-1]["THROUGH"] == "process"


def test_corrupt_state_file_is_rebuilt(box: container.Container) -> None:
    path = f"{box.runtime_dir()}/distsvc/state.json"
    # A pass still running (from the timer) would be joined by `start` below, not repeated.
    wait_until(lambda: systemctl(box, "is-active", "distsvc-scan.service", check=False)
               == "inactive", 30, "the timer's pass to finish")
    box.write_file(path, "{ torn", owner=box.user, mode=0o600)
    systemctl(box, "start", "distsvc-scan.service")
    assert systemctl(box, "show", "-p", "Result", "--value", "distsvc-scan.service") == "success"
    state = state_file(box)
    assert state is not None and state["version"] == 1
    box.wait_for_journal("distsvc-scan.service", "state file corrupt")


def test_bad_frames_leave_the_activated_daemon_serving(box: container.Container) -> None:
    box.run_as_user(["distsvc", "status"])
    rng = random.Random(7)
    for data in [b"\xff\xff\xff\xff", struct.pack("!I", 3) + b"abc",
                 *(rng.randbytes(rng.randrange(1, 3000)) for _ in range(50))]:
        answer = raw_exchange(box, data)
        if answer:
            (message,) = distsvc.protocol.Decoder().feed(answer)
            assert message["ok"] is False
    answer = json.loads(box.run_as_user(["distsvc", "status", "--json"]).stdout)
    assert answer["running"]


def test_another_user_is_refused(box: container.Container) -> None:
    box.add_user("intruder")
    request = distsvc.protocol.encode({"type": "status"})
    with pytest.raises(container.CommandFailed, match="Permission denied"):
        raw_exchange(box, request, user="intruder")
    # Even with the way opened on purpose, the daemon's peer check refuses the uid.
    sock = f"{box.runtime_dir()}/distsvc/distsvc.sock"
    box.run(["chmod", "o+x", box.runtime_dir(), f"{box.runtime_dir()}/distsvc"])
    box.run(["chmod", "o+rw", sock])
    try:
        (message,) = distsvc.protocol.Decoder().feed(raw_exchange(box, request, user="intruder"))
        assert message["ok"] is False and "permission denied" in message["error"]
        box.wait_for_journal("distsvc.service", "refused a connection from another user")
    finally:
        box.run(["chmod", "o-rwx", box.runtime_dir(), f"{box.runtime_dir()}/distsvc", sock])
    assert json.loads(box.run_as_user(["distsvc", "status", "--json"]).stdout)["running"]


def test_insecure_runtime_directory_is_skipped_and_work_goes_on(
        box: container.Container) -> None:
    directory = f"{box.runtime_dir()}/distsvc"
    box.run(["chmod", "755", directory])
    try:
        status = box.run_as_user(["distsvc", "status"], check=False)
        assert status.returncode == 3 and "not running" in status.stdout
        result = box.run_as_user(["distsvc-run", "echo", "still works"],
                                 env={"DISTSVC_DAEMON": "off"})
        assert result.stdout == "still works\n"
    finally:
        box.run(["chmod", "700", directory])


def test_stale_socket_after_stop_does_not_hang_clients(box: container.Container) -> None:
    systemctl(box, "stop", "distsvc.socket", "distsvc.service")
    directory = box.host_path(f"{box.runtime_dir()}/distsvc")
    assert not (directory / "distsvc.sock").exists()  # RemoveOnStop
    # A socket file nobody listens on, as a crashed daemon would leave.
    code = ("import socket,sys,os; s=socket.socket(socket.AF_UNIX); "
            "os.makedirs(os.path.dirname(sys.argv[1]), mode=0o700, exist_ok=True); "
            "s.bind(sys.argv[1]); s.close()")
    box.run_as_user(["python3", "-c", code, f"{box.runtime_dir()}/distsvc/distsvc.sock"])
    started = time.monotonic()
    result = box.run_as_user(["distsvc-run", "echo", "fallback"], timeout=60)
    assert result.stdout == "fallback\n"
    assert time.monotonic() - started < 30  # a bound against hanging only
    # The client started a daemon of its own, which replaced the stale socket.
    wait_until(lambda: box.run_as_user(["distsvc", "status"], check=False).returncode == 0,
               30, "the spawned daemon")
    box.run_as_user(["pkill", "-f", "distsvc daemon"], check=False)
    wait_until(lambda: box.run_as_user(["pgrep", "-f", "distsvc daemon"], check=False
                                       ).returncode == 1, 30, "the spawned daemon to exit")
    systemctl(box, "start", "distsvc.socket")


def test_idle_daemon_exits_and_the_socket_restarts_it(box: container.Container) -> None:
    config = f"{box.home}/.config/distsvc/config.toml"
    original = box.read_file(config)
    box.write_file(config, "daemon_idle_exit = 2\n" + original, owner=box.user)
    try:
        systemctl(box, "restart", "distsvc.socket")
        box.run_as_user(["distsvc", "status"])
        wait_until(lambda: systemctl(box, "is-active", "distsvc.service", check=False)
                   == "inactive", 30, "the idle daemon to exit")
        assert systemctl(box, "is-active", "distsvc.socket") == "active"
        assert box.run_as_user(["distsvc", "status"]).returncode == 0
    finally:
        box.write_file(config, original, owner=box.user)


# The daemon's life under systemd: restart and stop mid-command, no systemd-python, an old
# version left running, a unit that cannot start.

DROP_IN = ".config/systemd/user/distsvc.service.d/test.conf"
REQUIRED = {"DISTSVC_DAEMON": "required"}


@contextlib.contextmanager
def service_override(c: container.Container, text: str) -> Iterator[None]:
    """distsvc.service with a drop-in of the user's; the daemon stopped before and after."""
    systemctl(c, "stop", "distsvc.service")
    c.write_file(f"{c.home}/{DROP_IN}", text, owner=c.user)
    systemctl(c, "daemon-reload")
    try:
        yield
    finally:
        c.run(["rm", "-f", f"{c.home}/{DROP_IN}"])
        systemctl(c, "daemon-reload")
        systemctl(c, "stop", "distsvc.service")
        systemctl(c, "reset-failed", "distsvc.service", "distsvc.socket", check=False)
        systemctl(c, "start", "distsvc.socket")


def main_pid(c: container.Container) -> int:
    return int(systemctl(c, "show", "-p", "MainPID", "--value", "distsvc.service"))


def status(c: container.Container) -> dict[str, Any]:
    return json.loads(c.run_as_user(["distsvc", "status", "--json"], env=REQUIRED).stdout)  # type: ignore[no-any-return]


def remote_left(c: container.Container, marker: str) -> str:
    """The test user's processes whose command line holds `marker` (sshd's children too)."""
    return c.run(["pgrep", "-a", "-u", c.user, "-f", marker], check=False).stdout.strip()


def start_sleeps(c: container.Container, count: int
                 ) -> list[tuple[str, container.ContainerProcess]]:
    started = []
    for _ in range(count):
        marker = str(random.randrange(10**6, 10**7))
        process = c.popen_as_user(["distsvc-run", "sleep", marker], env=REQUIRED,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append((marker, process))
    for marker, _ in started:
        wait_until(lambda m=marker: remote_left(c, f"^sleep {m}$"), 30, f"sleep {marker} on h1")
    return started


@pytest.mark.parametrize("how", ["restart", "stop"])
def test_restart_or_stop_while_commands_run(box: container.Container, how: str) -> None:
    systemctl(box, "start", "distsvc.socket")
    old = status(box)["pid"]
    commands = start_sleeps(box, 3)
    assert len(status(box)["jobs"]) == 3
    systemctl(box, how, "distsvc.service")
    for marker, process in commands:
        _, err = process.communicate(timeout=60)
        assert process.returncode == 255, err
        # After what the command says as SIGTERM ends it (the shell's "Terminated").
        assert err.count(b"distsvc:") == 1, err
        assert err.decode().splitlines()[-1] == (
            f"distsvc: the daemon was stopped (restart?) while sleep {marker} ran on h1; "
            "the command was ended there")
        wait_until(lambda m=marker: not remote_left(box, m), 20, f"sleep {marker} to be gone")
    if how == "restart":
        assert systemctl(box, "is-active", "distsvc.service") == "active"
    # The next command is served by a new daemon (socket-activated after a stop).
    result = box.run_as_user(["distsvc-run", "echo", "next"], env=REQUIRED)
    assert result.stdout == "next\n"
    new = status(box)["pid"]
    assert new != old and new == main_pid(box)
    assert systemctl(box, "show", "-p", "NRestarts", "--value", "distsvc.service") == "0"


def test_the_daemon_works_without_systemd_python(box: container.Container) -> None:
    # A second installation, like one made without the [systemd] extra: the project's venv
    # minus systemd-python, so `import systemd` really fails in the daemon.
    venv = "/opt/distsvc-nosd"
    box.run(["/usr/bin/python3", "-m", "venv", "--without-pip", venv])
    site = f"{container.VENV_BIN.parent}/lib/python3.11/site-packages"
    ours = box.run([f"{venv}/bin/python", "-c",
                    "import site; print(site.getsitepackages()[0])"]).stdout.strip()
    box.run(["sh", "-c", f'for f in {site}/*; do case "${{f##*/}}" in systemd*|pystemd*) ;; '
             f'*) ln -s "$f" {ours}/ ;; esac; done'])
    box.write_file(f"{venv}/bin/distsvc", f"#!{venv}/bin/python\nimport sys\n"
                   "from distsvc.commands.main import main\nsys.exit(main())\n", mode=0o755)
    missing = box.run([f"{venv}/bin/python", "-c", "import systemd"], check=False)
    assert "No module named 'systemd'" in missing.stderr
    with service_override(box, f"[Service]\nExecStart=\nExecStart={venv}/bin/distsvc daemon\n"):
        result = box.run_as_user(["distsvc-run", "sh", "-c", "echo out; exit 4"], env=REQUIRED,
                                 check=False)
        assert (result.returncode, result.stdout) == (4, "out\n"), result.stderr
        pid = status(box)["pid"]
        assert pid == main_pid(box)
        assert box.read_file(f"/proc/{pid}/cmdline").startswith(f"{venv}/bin/python")
        # Socket activation, readiness, status and watchdog, all without the module.
        assert "serving" in systemctl(box, "show", "-p", "StatusText", "--value",
                                      "distsvc.service")
        assert systemctl(box, "show", "-p", "NRestarts", "--value", "distsvc.service") == "0"
        entries = box.wait_for_journal("distsvc.service", "job ended")
        messages = [str(e.get("MESSAGE")) for e in entries if str(e.get("_PID")) == str(pid)]
        assert any("systemd-python is not installed" in m for m in messages)
        assert any("daemon ready" in m for m in messages)
        assert not any("Traceback" in m for m in messages)


OLD_DAEMON = """\
import sys
import distsvc
distsvc.identity = lambda: "0.0.1+old"  # as if installed before an upgrade
from distsvc.commands.main import main
sys.exit(main(["daemon"]))
"""


def test_an_old_daemon_is_replaced_within_one_command(box: container.Container) -> None:
    box.write_file("/opt/distsvc-old-daemon.py", OLD_DAEMON)
    with service_override(box, f"[Service]\nExecStart=\n"
                          f"ExecStart={container.VENV_BIN}/python /opt/distsvc-old-daemon.py\n"):
        command = box.popen_as_user(["distsvc-run", "sh", "-c", "sleep 3; echo finished"],
                                    env=REQUIRED, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        old = wait_until(lambda: main_pid(box), 30, "the old daemon to start")
        assert "distsvc-old-daemon.py" in box.read_file(f"/proc/{old}/cmdline")
        # The upgrade: the old daemon's files are replaced while it runs.
        box.run(["rm", "-f", f"{box.home}/{DROP_IN}"])
        systemctl(box, "daemon-reload")
        # The old daemon finishes the command of the new client, then leaves ...
        out, err = command.communicate(timeout=60)
        assert (command.returncode, out) == (0, b"finished\n"), err
        wait_until(lambda: main_pid(box) != old, 30, "the old daemon to leave")
        # ... and the next command starts the new one.
        result = box.run_as_user(["distsvc-run", "echo", "new"], env=REQUIRED)
        assert result.stdout == "new\n"
        answer = status(box)
        assert answer["pid"] not in (old, 0) and answer["retiring"] is False
        assert "distsvc-old-daemon.py" not in box.read_file(f"/proc/{answer['pid']}/cmdline")
        entries = box.wait_for_journal("distsvc.service", "retiring: a newer daemon takes over")
        assert [e for e in entries if "a client of another version" in str(e.get("MESSAGE"))
                and str(e.get("_PID")) == str(old)]


def test_status_says_why_the_service_cannot_start(box: container.Container) -> None:
    with service_override(box, "[Service]\nExecStart=\nExecStart=/usr/bin/distsvc daemon "
                          "--no-such-option\n"):
        systemctl(box, "restart", "distsvc.socket")
        done = box.run_as_user(["distsvc", "status"], check=False, timeout=60)
        assert done.returncode == 3 and "not running" in done.stdout
        wait_until(lambda: systemctl(box, "show", "-p", "Result", "--value", "distsvc.service")
                   != "success", 30, "the service to fail")
        done = box.run_as_user(["distsvc", "status"], check=False, timeout=60)
        (line,) = [line for line in done.stdout.splitlines() if "last start failed" in line]
        assert "distsvc.service failed (exit-code, exit status 2)" in line
        assert "unrecognized arguments: --no-such-option" in line
