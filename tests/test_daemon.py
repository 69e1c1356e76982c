"""The daemon over real unix sockets, started in-process: protocol, peers, discovery, abuse.

(Socket activation, the timer and the journal are tested under a real systemd in
test_systemd_e2e.py; commands through the daemon against sshd in the *_e2e.py tests.)
"""

from __future__ import annotations

import dataclasses
import os
import random
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

import distsvc.actions.client
import distsvc.actions.serve
import distsvc.adapters.unix
import distsvc.protocol
import helpers

NOBODY = 65534


@dataclasses.dataclass
class Running:
    directory: Path
    environ: dict[str, str]
    daemon: distsvc.actions.serve.Daemon
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
    daemon = distsvc.actions.serve.new_daemon(environ, None)
    stop = distsvc.actions.serve.Stop()

    def run() -> None:
        try:
            distsvc.actions.serve.serve(listener, daemon, stop)
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


def test_another_user_is_refused_by_peer_credentials(running: Running) -> None:
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
        assert distsvc.adapters.unix.find_socket(environ) == candidate(tmp_base, 3) / "distsvc.sock"
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


def test_runtime_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    environ = user_environ(tmp_path)
    directory = distsvc.adapters.unix.claim_directory(environ)
    directory.chmod(0o755)
    assert distsvc.adapters.unix.find_socket(environ) is None
    with pytest.raises(PermissionError):
        distsvc.adapters.unix.claim_directory(environ)
