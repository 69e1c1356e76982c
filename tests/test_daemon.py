"""The daemon over real unix sockets, started in-process: protocol, peers, discovery, abuse.

(Socket activation, the timer and the journal are tested under a real systemd in
test_systemd_e2e.py; commands through the daemon against sshd in the *_e2e.py tests.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import conftest
import distsvc.actions.client
import distsvc.adapters.unix
import distsvc.config
import distsvc.daemon.context
import distsvc.daemon.serve
import distsvc.log
import distsvc.paths
import distsvc.probe
import distsvc.protocol
import distsvc.state
import helpers
import sshbed

NOBODY = 65534


@dataclasses.dataclass
class Running:
    directory: Path
    environ: dict[str, str]
    daemon: distsvc.daemon.context.Daemon
    thread: threading.Thread

    @property
    def socket_path(self) -> Path:
        return self.directory / distsvc.adapters.unix.SOCKET_NAME

    def exchange(self, data: bytes, timeout: float = 5.0) -> bytes:
        """Send raw bytes, close our side, return everything the daemon sent back."""
        return helpers.unix_exchange(self.socket_path, data, timeout)

    def status(self) -> dict[str, Any]:
        return distsvc.actions.client.query({"type": "status"}, self.environ)


def decode_all(data: bytes) -> list[dict[str, Any]]:
    return distsvc.protocol.Decoder().feed(data)


def user_environ(tmp_path: Path) -> dict[str, str]:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return {"HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(runtime),
            "XDG_CONFIG_HOME": str(tmp_path / "config"), "PATH": os.environ["PATH"]}


def start(environ: dict[str, str]) -> Running:
    directory = distsvc.adapters.unix.claim_directory(environ)
    lock = distsvc.adapters.unix.take_daemon_lock(directory)
    assert lock is not None
    listener = distsvc.adapters.unix.listen(directory)
    daemon = distsvc.daemon.context.new_daemon(environ, None)
    stop = distsvc.daemon.serve.Stop()

    def run() -> None:
        try:
            distsvc.daemon.serve.serve(listener, daemon, stop)
        finally:
            listener.close()
            os.close(lock)

    thread = threading.Thread(target=run, name="test-daemon")
    thread.start()
    running = Running(directory, environ, daemon, thread)
    running.stop = stop  # type: ignore[attr-defined]
    return running


@pytest.fixture
def reachable_tmp() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is private to root)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="distsvc-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def running(reachable_tmp: Path) -> Iterator[Running]:
    r = start(user_environ(reachable_tmp))
    yield r
    r.stop.set()  # type: ignore[attr-defined]
    r.thread.join(10)
    assert not r.thread.is_alive(), "the daemon did not stop"
    # No test may leave connection handlers behind.
    deadline = time.monotonic() + 12
    while any(t.name == "connection" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "connection threads left behind"
        time.sleep(0.05)


def test_socket_and_directory_are_private(running: Running) -> None:
    assert stat.S_IMODE(running.directory.stat().st_mode) == 0o700
    info = running.socket_path.lstat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600


def test_status(running: Running) -> None:
    answer = running.status()
    assert answer["ok"] and answer["version"] == distsvc.__version__
    assert answer["pid"] == os.getpid() and answer["jobs"] == [] and answer["connections"] == 0


def test_best_from_memory_spreads_whether_its_request_comes_at_once_or_late(
        running: Running) -> None:
    """A `best` whose request is in when it is accepted is answered on the accepting thread;
    one whose request comes later by a connection thread: the same answers, each counted."""
    directory = running.daemon.state_dir
    now = time.time()
    measured = distsvc.state.HostState(state=distsvc.state.UP, measured_at=now, access_ms=1.0,
                                       measurement=distsvc.probe.Measurement(load1=0.0, cpus=1))
    with distsvc.state.locked(directory):
        distsvc.state.write(directory, distsvc.state.State(hosts={"a": measured, "b": measured}))
    config = distsvc.config.to_mapping(distsvc.config.from_mapping(
        {"hosts": [{"name": "a"}, {"name": "b"}], "max_age": 3600}, "test", None))
    request = distsvc.protocol.encode({"type": "best", "config": config})
    hosts = [decode_all(running.exchange(request))[-1]["host"] for _ in range(5)]
    # Accepted, and peeked at, before the request comes:
    late = helpers.unix_exchange(running.socket_path, request, delay=0.3)
    hosts.append(decode_all(late)[-1]["host"])
    hosts += [decode_all(running.exchange(request))[-1]["host"]]
    assert hosts == ["a", "b", "a", "b", "a", "b", "a"]  # each answer counts on its host


def test_a_best_request_longer_than_one_peek_is_answered_on_the_accepting_thread(
        running: Running) -> None:
    """A `best` carries the client's configuration: with ~1,100 hosts its frame passes the
    first peek's 64 KiB. It is still answered from the tally on the accepting thread (before,
    such a request always went to a worker and the full ranking)."""
    names = [f"host-{i:04d}" for i in range(1100)]
    directory = running.daemon.state_dir
    measured = distsvc.state.HostState(state=distsvc.state.UP, measured_at=time.time(),
                                       access_ms=1.0,
                                       measurement=distsvc.probe.Measurement(load1=0.0, cpus=1))
    # Through the daemon's own store once it serves from memory: a write to the file would
    # make the first queries decline (another process wrote it: a worker reads it first).
    helpers.wait_for(lambda: distsvc.state.store(directory) is running.daemon.hoststate, 10,
                     "the daemon serving the state from memory")
    with running.daemon.hoststate.update() as state:
        state.hosts.update(dict.fromkeys(names, measured))
    config = distsvc.config.to_mapping(distsvc.config.from_mapping(
        {"hosts": [{"name": n, "address": f"127.0.3.{i % 250 + 1}", "user": "someone"}
                   for i, n in enumerate(names)], "max_age": 3600}, "test", None))
    request = distsvc.protocol.encode({"type": "best", "config": config})
    assert len(request) > distsvc.daemon.serve.INLINE_PEEK
    hosts = []
    for _ in range(3):
        # The accepting thread's own step, on a connection whose whole request is in (through
        # the listening socket the daemon may accept before it is: then a worker answers).
        ours, theirs = socket.socketpair(socket.AF_UNIX)
        with ours, theirs:
            ours.sendall(request)
            assert distsvc.daemon.serve.answer_inline(running.daemon, theirs)
            answer = b""
            while chunk := ours.recv(65536):
                answer += chunk
        hosts.append(decode_all(answer)[-1]["host"])
    hosts.append(decode_all(running.exchange(request))[-1]["host"])  # either way
    assert hosts == names[:4]  # each answer counts on its host


def test_the_daemon_reloads_its_configuration_when_the_file_changes(running: Running) -> None:
    assert running.status()["hosts_configured"] == 0
    path = Path(running.environ["XDG_CONFIG_HOME"]) / "distsvc" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text('[[hosts]]\nname = "a"\n[[hosts]]\nname = "b"\n')
    assert running.status()["hosts_configured"] == 2
    path.write_text("hosts = 3\n")  # invalid: the previous configuration stays
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert running.status()["hosts_configured"] == 2


def test_one_request_one_answer_per_connection(running: Running) -> None:
    request = distsvc.protocol.encode({"type": "status"})
    answers = decode_all(running.exchange(request * 3))
    assert len(answers) == 1 and answers[0]["ok"]


@pytest.mark.parametrize(("data", "expected"), [
    (b"\xff\xff\xff\xff", "exceeds"),
    (struct.pack("!I", 5) + b"hello", "not UTF-8 JSON"),
    (struct.pack("!I", 2) + b"[]", "not a JSON object"),
    (struct.pack("!I", 19) + b'{"v":99,"type":"x"}', "unsupported protocol version"),
    (distsvc.protocol.encode({"type": "launch-missiles"}), "unknown request type"),
    (distsvc.protocol.encode({"type": "best"}), "'config' is missing"),
    (distsvc.protocol.encode({"type": "run", "config": {}, "argv": ["x"], "env": {},
                              "workdir": "/"}), "needs stdin, stdout and stderr"),
    (struct.pack("!I", 100) + b'{"v":1', "closed mid-frame"),
    # answered on the accepting thread when well-formed: a malformed one must not take the
    # loop (and with it the daemon) down
    (distsvc.protocol.encode({"type": ["best"]}), "unknown request type"),
    (distsvc.protocol.encode({"type": "best", "config": {"hosts": "x"}}), "hosts"),
])
def test_bad_requests_get_an_error_and_the_daemon_serves_on(
        running: Running, data: bytes, expected: str) -> None:
    (answer,) = decode_all(running.exchange(data))
    assert answer["ok"] is False and expected in answer["error"]
    assert "\n" not in answer["error"]
    assert running.status()["ok"]


def test_fuzzed_bytes_leave_the_daemon_serving(running: Running) -> None:
    rng = random.Random(20261122)
    for i in range(300):
        if i % 3 == 0:  # a plausible header with garbage behind it
            body = rng.randbytes(rng.randrange(0, 300))
            data = struct.pack("!I", len(body) + rng.choice([0, 0, 1, 7])) + body
        else:
            data = rng.randbytes(rng.randrange(0, 2000))
        answer = running.exchange(data)
        assert len(answer) < 4096  # at most one short error frame
    assert running.status()["ok"]


def test_a_silent_client_does_not_hold_up_others(running: Running) -> None:
    with socket.socket(socket.AF_UNIX) as silent:
        silent.connect(str(running.socket_path))
        silent.sendall(b"\x00\x00")  # half a header, then nothing
        for _ in range(5):
            assert running.status()["ok"]


def test_another_user_is_refused_by_peer_credentials(running: Running, tmp_base: Path) -> None:
    # (tmp_base: with the runtime directory opened, the client looks in the /tmp fallback.)
    # Open the door on purpose, so only the daemon's own peer check stands in the way.
    running.directory.parent.chmod(0o711)
    running.directory.chmod(0o711)
    running.socket_path.chmod(0o666)
    code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
            "s.sendall(bytes.fromhex(sys.argv[2])); s.shutdown(1); "
            "sys.stdout.buffer.write(s.recv(4096))")
    request = distsvc.protocol.encode({"type": "status"}).hex()
    out = subprocess.run([sys.executable, "-c", code, str(running.socket_path), request],
                         user=NOBODY, capture_output=True, timeout=20)
    (answer,) = decode_all(out.stdout)
    assert answer["ok"] is False and "permission denied" in answer["error"]
    # Our own client refuses a directory others can reach; closed again, it is served.
    with pytest.raises(distsvc.actions.client.Unavailable):
        running.status()
    running.directory.chmod(0o700)
    with pytest.raises(distsvc.actions.client.Unavailable):
        running.status()  # the runtime directory itself is still open
    running.directory.parent.chmod(0o700)
    assert running.status()["ok"]


def test_another_user_cannot_even_connect_to_the_private_socket(running: Running) -> None:
    code = "import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"
    out = subprocess.run([sys.executable, "-c", code, str(running.socket_path)], user=NOBODY,
                         capture_output=True, text=True, timeout=20)
    assert out.returncode != 0 and "Permission denied" in out.stderr


def test_a_second_daemon_exits_by_itself(running: Running) -> None:
    env = {**running.environ, "DISTSVC_LOG": "info"}
    second = subprocess.run([sys.executable, "-m", "distsvc", "daemon"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 0 and "another daemon is serving" in second.stderr
    assert running.status()["pid"] == os.getpid()


def test_daemon_exits_when_idle(tmp_path: Path) -> None:
    environ = user_environ(tmp_path)
    (tmp_path / "config" / "distsvc").mkdir(parents=True)
    (tmp_path / "config" / "distsvc" / "config.toml").write_text("daemon_idle_exit = 1\n")
    r = start(environ)
    r.thread.join(15)
    assert not r.thread.is_alive()


def test_a_running_daemon_is_seen_without_connecting(running: Running, tmp_path: Path) -> None:
    assert distsvc.adapters.unix.daemon_running(running.socket_path)
    assert not distsvc.adapters.unix.daemon_running(tmp_path / "nothing" / "distsvc.sock")


def test_scan_passes_do_not_keep_an_idle_daemon_alive(tmp_path: Path) -> None:
    environ = user_environ(tmp_path)
    (tmp_path / "config" / "distsvc").mkdir(parents=True)
    (tmp_path / "config" / "distsvc" / "config.toml").write_text("daemon_idle_exit = 1\n")
    r = start(environ)
    request = {"type": "scan", "config": {"hosts": []}}
    deadline = time.monotonic() + 20
    while r.thread.is_alive():
        assert time.monotonic() < deadline, "scan requests kept the daemon alive"
        try:
            assert distsvc.actions.client.query(request, environ)["measured"] == []
        except distsvc.actions.client.Unavailable:
            pass  # it exited meanwhile
        time.sleep(0.3)


def test_no_daemon_means_unavailable_quickly(tmp_path: Path) -> None:
    environ = user_environ(tmp_path)
    started = time.monotonic()
    with pytest.raises(distsvc.actions.client.Unavailable):
        distsvc.actions.client.query({"type": "status"}, environ)
    assert time.monotonic() - started < 5  # a bound against hanging, not a benchmark


def test_stale_socket_is_unavailable_then_replaced(tmp_path: Path) -> None:
    environ = user_environ(tmp_path)
    directory = distsvc.adapters.unix.claim_directory(environ)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(directory / "distsvc.sock"))
    stale.close()  # the file stays, nobody listens
    with pytest.raises(distsvc.actions.client.Unavailable):
        distsvc.actions.client.query({"type": "status"}, environ)
    r = start(environ)  # a new daemon cleans it up
    try:
        assert r.status()["ok"]
    finally:
        r.stop.set()  # type: ignore[attr-defined]
        r.thread.join(10)


# Without XDG_RUNTIME_DIR: /tmp/distsvc-USER-N, with every candidate checked by lstat.

@pytest.fixture
def tmp_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    base = tmp_path / "tmp"
    base.mkdir(mode=0o1777)
    base.chmod(0o1777)
    monkeypatch.setenv("DISTSVC_TMP_BASE", str(base))
    return base


def candidate(base: Path, n: int) -> Path:
    import pwd

    return base / f"distsvc-{pwd.getpwuid(os.getuid()).pw_name}-{n}"


def no_runtime(tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}


def test_hostile_directories_are_skipped(tmp_path: Path, tmp_base: Path) -> None:
    owned_by_other = candidate(tmp_base, 0)
    owned_by_other.mkdir(mode=0o700)
    os.chown(owned_by_other, NOBODY, NOBODY)
    too_open = candidate(tmp_base, 1)
    too_open.mkdir()
    too_open.chmod(0o755)
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    candidate(tmp_base, 2).symlink_to(mine)  # a symlink, even to our own directory
    environ = no_runtime(tmp_path)
    assert distsvc.adapters.unix.claim_directory(environ) == candidate(tmp_base, 3)
    assert stat.S_IMODE(candidate(tmp_base, 3).stat().st_mode) == 0o700
    r = start(environ)
    try:
        found = distsvc.adapters.unix.find_socket(environ)
        assert found == str(candidate(tmp_base, 3) / "distsvc.sock")
        assert r.status()["ok"]
    finally:
        r.stop.set()  # type: ignore[attr-defined]
        r.thread.join(10)


def test_a_socket_owned_by_another_user_is_never_used(tmp_path: Path, tmp_base: Path) -> None:
    directory = candidate(tmp_base, 0)
    directory.mkdir(mode=0o700)
    planted = socket.socket(socket.AF_UNIX)
    planted.bind(str(directory / "distsvc.sock"))
    planted.listen()
    os.chown(directory / "distsvc.sock", NOBODY, NOBODY)
    try:
        assert distsvc.adapters.unix.find_socket(no_runtime(tmp_path)) is None
    finally:
        planted.close()


def test_a_symlinked_socket_is_never_used(tmp_path: Path) -> None:
    environ = user_environ(tmp_path)
    directory = distsvc.adapters.unix.claim_directory(environ)
    elsewhere = tmp_path / "elsewhere.sock"
    planted = socket.socket(socket.AF_UNIX)
    planted.bind(str(elsewhere))
    planted.listen()
    (directory / "distsvc.sock").symlink_to(elsewhere)
    try:
        assert distsvc.adapters.unix.find_socket(environ) is None
    finally:
        planted.close()


@pytest.mark.parametrize("spoil", ["runtime open", "distsvc open", "distsvc not ours",
                                   "distsvc a file"])
def test_a_runtime_directory_that_is_not_private_makes_both_sides_use_tmp(
        reachable_tmp: Path, tmp_base: Path, spoil: str) -> None:
    environ = {**user_environ(reachable_tmp), "DISTSVC_TMP_BASE": str(tmp_base)}
    runtime = Path(environ["XDG_RUNTIME_DIR"])
    if spoil == "runtime open":
        runtime.chmod(0o755)
    elif spoil == "distsvc a file":
        (runtime / "distsvc").write_text("")
    else:
        (runtime / "distsvc").mkdir(mode=0o700)
        if spoil == "distsvc open":
            (runtime / "distsvc").chmod(0o755)
        else:
            os.chown(runtime / "distsvc", NOBODY, NOBODY)
    fallback = candidate(tmp_base, 0)
    assert distsvc.adapters.unix.find_socket(environ) is None
    # A real daemon and a real client, each deciding for itself.
    daemon = subprocess.Popen([sys.executable, "-m", "distsvc", "daemon"], env=environ,
                              stderr=subprocess.PIPE, cwd="/")
    try:
        helpers.wait_for(lambda: (fallback / "distsvc.sock").exists() or daemon.poll(), 20,
                         "the daemon's socket in the fallback location")
        assert distsvc.adapters.unix.find_socket(environ) == str(fallback / "distsvc.sock")
        status = subprocess.run([sys.executable, "-m", "distsvc", "status", "--json"],
                                env=environ, capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stdout + status.stderr
        assert json.loads(status.stdout)["pid"] == daemon.pid
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=20)
    assert daemon.returncode == 0
    assert b"not a private directory" in err and b"serving in /tmp" in err
    assert not list(runtime.glob("distsvc/distsvc.sock"))


# Lifecycle: retiring for a newer client, the log of a spawned daemon, what status shows.

def test_status_shows_memory_and_connections(running: Running) -> None:
    answer = running.status()
    assert answer["rss_kib"] > 1000  # a Python process with paramiko loaded
    assert answer["connections"] == 0 and answer["connections_per_host"] == {}
    assert answer["retiring"] is False


def test_a_client_of_another_version_makes_the_daemon_retire(running: Running) -> None:
    running.daemon.identity = "0.0.1+old"  # as if this daemon predated an upgrade
    # The same version: served, and the daemon stays.
    assert distsvc.actions.client.query({"type": "status", "client": running.daemon.identity},
                                        running.environ)["ok"]
    time.sleep(1.5)
    assert running.thread.is_alive()
    # A real client of this installation: served, then the daemon leaves...
    first = subprocess.run([sys.executable, "-m", "distsvc", "status", "--json"],
                           env=running.environ, capture_output=True, text=True, timeout=30)
    assert first.returncode == 0 and json.loads(first.stdout)["retiring"] is True
    running.thread.join(20)
    assert not running.thread.is_alive(), "the old daemon did not retire"
    # ... and a daemon of the client's version serves the next one.
    daemon = subprocess.Popen([sys.executable, "-m", "distsvc", "daemon"], env=running.environ,
                              stderr=subprocess.DEVNULL, cwd="/")
    try:
        def answered() -> Any:
            done = subprocess.run([sys.executable, "-m", "distsvc", "status", "--json"],
                                  env=running.environ, capture_output=True, text=True,
                                  timeout=30)
            return done.returncode == 0 and json.loads(done.stdout)
        answer = helpers.wait_for(answered, 30, "the new daemon")
        assert answer["pid"] == daemon.pid and answer["retiring"] is False
    finally:
        daemon.terminate()
        daemon.wait(20)


def test_a_daemon_whose_own_files_changed_retires(running: Running) -> None:
    """Clients send only version and place (no ~100 stats per command): the daemon notices
    its files changing itself, as after a `git pull` in an editable install."""
    assert running.daemon.source_stamp == distsvc.source_stamp()
    # A worker's request within a second of the last look does not look again ...
    distsvc.actions.client.query({"type": "hosts", "config": {"hosts": []}}, running.environ)
    assert running.status()["retiring"] is False
    # ... a later one does, and finds files newer than at the daemon's start.
    running.daemon.source_stamp -= 1
    running.daemon.source_checked -= distsvc.daemon.serve.SOURCE_CHECK_INTERVAL
    answer = distsvc.actions.client.query({"type": "hosts", "config": {"hosts": []}},
                                          running.environ)
    assert answer["ok"] is True  # served all the same
    running.thread.join(20)
    assert not running.thread.is_alive(), "the daemon did not retire"


def test_a_spawned_daemon_that_cannot_start_says_why_in_status(reachable_tmp: Path) -> None:
    environ = user_environ(reachable_tmp)
    runtime = Path(environ["XDG_RUNTIME_DIR"])
    (runtime / "distsvc").mkdir(mode=0o700)
    (runtime / "distsvc" / "daemon.lock").mkdir()  # the daemon cannot take its lock
    log = distsvc.paths.daemon_log(environ)
    distsvc.actions.client.spawn(environ)
    helpers.wait_for(lambda: log.exists() and "cannot start" in log.read_text(), 30,
                     "the daemon's failure in its log")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    status = subprocess.run([sys.executable, "-m", "distsvc", "status"], env=environ,
                            capture_output=True, text=True, timeout=30)
    assert status.returncode == 3 and "not running" in status.stdout
    (line,) = [line for line in status.stdout.splitlines() if "last start failed" in line]
    assert "daemon cannot start" in line and "Is a directory" in line and str(log) in line
    # Once a start succeeds, the old failure is no longer reported.
    (runtime / "distsvc" / "daemon.lock").rmdir()
    distsvc.actions.client.spawn(environ)
    helpers.wait_for(lambda: "daemon ready" in log.read_text(), 30, "the daemon to start")
    try:
        answer = json.loads(subprocess.run(
            [sys.executable, "-m", "distsvc", "status", "--json"], env=environ,
            capture_output=True, text=True, timeout=30).stdout)
        assert answer["running"]
    finally:
        os.kill(answer["pid"], signal.SIGTERM)
    helpers.wait_for(lambda: "daemon stopped" in log.read_text(), 20, "the daemon to stop")
    assert distsvc.log.last_start_failure(log) is None


def test_the_daemon_log_is_rotated_when_it_grows(tmp_path: Path) -> None:
    log = tmp_path / "state" / "daemon.log"
    log.parent.mkdir()
    log.write_bytes(b"x" * (distsvc.log.LOG_LIMIT + 1))
    os.close(distsvc.log.open_daemon_log(log, "test"))
    assert log.with_name("daemon.log.1").stat().st_size == distsvc.log.LOG_LIMIT + 1
    assert log.read_text().startswith(distsvc.log.START_MARK)


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_without_systemd_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          abstract: bool) -> None:
    import distsvc.adapters.systemd

    name = f"distsvc-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name if abstract else name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name if abstract else name)
        distsvc.adapters.systemd.notify(READY=1, STATUS="serving")
        receiver.settimeout(5)
        assert receiver.recv(4096) == b"READY=1\nSTATUS=serving"


# Against real sshd: the daemon dies, hangs or is stopped while it carries commands.

def daemon_pid(client: conftest.Client) -> int:
    return int(json.loads(client.run("distsvc", "status", "--json").stdout)["pid"])


def gone(pid: int) -> bool:
    """Exited (a zombie counts: the fixture reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def start_sleeps(client: conftest.Client, count: int) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """`count` commands `sleep MARKER` through the daemon, each running on its host."""
    started = []
    for _ in range(count):
        marker = str(random.randrange(10**6, 10**7))
        process = client.popen("distsvc-run", "sleep", marker, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append((marker, process))
    for marker, _ in started:
        helpers.wait_for(lambda m=marker: client.bed.remote_processes(f"sleep {m}"), 30,
                         f"sleep {marker} on its host")
    return started


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP])
def test_a_client_whose_daemon_dies_or_hangs_is_told_within_seconds(
        daemon_client: conftest.Client, fault: int) -> None:
    client = daemon_client
    client.configure(hosts=client.bed.hosts[:1])
    pid = daemon_pid(client)
    ((marker, process),) = start_sleeps(client, 1)
    os.kill(pid, fault)
    try:
        # Bounded generously: the heartbeat silence is 10 s (a SIGKILL is seen at once).
        assert process.wait(timeout=60) == 255
    finally:
        if fault == signal.SIGSTOP:
            os.kill(pid, signal.SIGCONT)
    # (Read only now: the stopped daemon held the client's stdout and stderr open.)
    _, err = process.communicate(timeout=30)
    # (The resumed daemon may pass on what the command wrote as it was hung up: "Hangup".)
    line, *rest = err.decode().splitlines()
    assert not [other for other in rest if "distsvc" in other], err
    how = "went away" if fault == signal.SIGKILL else "stopped answering (nothing for 10 s)"
    assert line.startswith(f"distsvc: the daemon {how} while sleep {marker} ran on h1; "
                           "the command is ended there")
    # Ended on the host: by the resumed daemon (its client hung up), or by the remote wrapper
    # when the dead daemon's connection went away.
    helpers.wait_for(lambda: not client.bed.remote_processes(f"sleep {marker}"), 20,
                     "the command to be ended on its host")
    if fault == signal.SIGSTOP:  # the resumed daemon serves on
        result = client.run("distsvc-run", "echo", "served")
        assert (result.returncode, result.stdout) == (0, b"served\n")
        answer = json.loads(client.run("distsvc", "status", "--json").stdout)
        assert answer["pid"] == pid and answer["connections_per_host"] == {"h1": 1}
        assert answer["jobs"] == []


def test_a_stopped_daemon_ends_the_running_commands_and_tells_their_clients(
        daemon_client: conftest.Client) -> None:
    client = daemon_client
    client.configure(hosts=client.bed.hosts[:2])
    pid = daemon_pid(client)
    commands = start_sleeps(client, 3)
    os.kill(pid, signal.SIGTERM)
    for marker, process in commands:
        _, err = process.communicate(timeout=30)
        assert process.returncode == 255
        # After what the command says as SIGTERM ends it (the shell's "Terminated").
        *_, line = err.decode().splitlines()
        assert err.count(b"distsvc") == 1, err
        assert line.startswith(f"distsvc: the daemon was stopped (restart?) while sleep {marker}"
                               " ran on h") and line.endswith("; the command was ended there")
        assert not client.bed.remote_processes(f"sleep {marker}")
    helpers.wait_for(lambda: gone(pid), 20, "the daemon to exit")
    result = client.run("distsvc-run", "true")
    assert result.returncode == 255 and b"DISTSVC_DAEMON=required" in result.stderr


def test_a_stop_tells_the_client_even_when_its_host_hangs(daemon_client: conftest.Client) -> None:
    client = daemon_client
    host = client.bed.hosts[0]
    client.configure(hosts=[host])
    pid = daemon_pid(client)
    ((marker, process),) = start_sleeps(client, 1)
    assert host.process is not None
    # The servers of the host's connections hang (the listener still accepts): the command's
    # end can never be seen, so the stop's grace runs out.
    frozen = [p for p in sshbed.descendants(host.process.pid)
              if Path(f"/proc/{p}/comm").read_text().strip() == "sshd"]
    for p in frozen:
        os.kill(p, signal.SIGSTOP)
    try:
        os.kill(pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 255
        helpers.wait_for(lambda: gone(pid), 30, "the daemon to exit")
    finally:
        for p in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)
    _, err = process.communicate(timeout=30)
    assert err.count(b"distsvc:") == 1, err
    assert err.decode().splitlines()[-1] == (
        f"distsvc: the daemon was stopped (restart?) while sleep {marker} ran on h1; the "
        "command is ended there as the daemon's connection closes")
    helpers.wait_for(lambda: not client.bed.remote_processes(f"sleep {marker}"), 30,
                     "the command to be ended on its host")


def test_a_daemon_with_an_invalid_configuration_starts_with_the_defaults(
        reachable_tmp: Path) -> None:
    environ = user_environ(reachable_tmp)
    path = Path(environ["XDG_CONFIG_HOME"]) / "distsvc" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text("hosts = 3\n")
    r = start(environ)  # a daemon that refused would leave every command in-process
    try:
        assert r.status()["ok"] and r.status()["hosts_configured"] == 0
    finally:
        r.stop.set()  # type: ignore[attr-defined]
        r.thread.join(10)
