from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import sshbed
import vmbed

BIN = Path(sys.executable).parent


def pytest_configure(config: pytest.Config) -> None:
    """A run started in the background by a non-interactive shell (`.ci/run &`, nohup)
    inherits SIGINT and SIGQUIT ignored, and so would every process the tests start (sshd,
    daemons, commands): the tests of Ctrl-C would then fail, or prove nothing. The defaults
    come back here, as a terminal's job has them (a handler is reset to the default on exec;
    an ignored signal stays ignored)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test is a failed run: every test's parts are installed by
    scripts/setup.sh --test, so a skip means something is missing, not optional."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = reporter.stats.get("skipped", [])
    if skipped and exitstatus == 0:
        reporter.write_line(f"{len(skipped)} tests skipped: the run fails (no test may be "
                            "skipped; see the reasons above)", red=True)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def bed() -> Iterator[sshbed.Bed]:
    reason = sshbed.can_run()
    if reason:
        pytest.skip(reason)
    with sshbed.running() as bed:
        yield bed


class Client:
    """A user of distsvc with a home of their own: key, known_hosts, config, state."""

    def __init__(self, bed: sshbed.Bed, home: Path) -> None:
        self.bed = bed
        self.home = home
        self.mode = "direct"  # or "daemon": commands go through a daemon
        ssh = home / ".ssh"
        ssh.mkdir(mode=0o700, parents=True)
        key = ssh / "id_ed25519"
        key.write_bytes(bed.client_key.read_bytes())
        key.chmod(0o600)
        (ssh / "known_hosts").write_text(
            "".join(h.known_hosts_line + "\n" for h in bed.hosts))
        self.runtime = home / "run"
        self.runtime.mkdir(mode=0o700)
        self.workdir = bed.home  # exists on every host and is the test user's
        self.env: dict[str, str] = {
            "HOME": str(home),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_RUNTIME_DIR": str(self.runtime),
            "LANG": "C.UTF-8",
            "PWD": str(self.workdir),
        }

    def configure(self, hosts: Sequence[sshbed.Host] | None = None,
                  probes: dict[str, str] | None = None, extra: str = "",
                  unknown: Sequence[dict[str, Any]] = (),
                  settings: dict[str, dict[str, Any]] | None = None) -> Path:
        """Write config.toml naming `hosts` (default: all) with optional custom probes,
        per-host `settings`, `extra` top-level TOML and hosts outside the bed (`unknown`)."""
        hosts = self.bed.hosts if hosts is None else hosts
        tables = []
        for h in hosts:
            table: dict[str, Any] = {"name": h.name, "address": h.address, "port": h.port,
                                     "user": self.bed.user}
            if probes and h.name in probes:
                table["probe"] = probes[h.name]
            table.update((settings or {}).get(h.name, {}))
            tables.append(table)
        lines = [extra]
        for table in [*tables, *unknown]:
            lines.append("[[hosts]]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
        path = self.home / ".config" / "distsvc" / "config.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        return path

    def proxy_host(self, name: str, jump: sshbed.Host, target: sshbed.Host) -> None:
        """~/.ssh/config's Host `name`: `target` through `ssh -W` over `jump` (a ProxyCommand
        child per connection)."""
        ssh = self.home / ".ssh"
        proxy = (f"ssh -F /dev/null -i {ssh}/id_ed25519 -o BatchMode=yes "
                 f"-o UserKnownHostsFile={ssh}/known_hosts -p {jump.port} "
                 f"{self.bed.user}@{jump.address} -W %h:%p")
        (ssh / "config").write_text(
            f"Host {name}\n  HostName {target.address}\n  Port {target.port}\n"
            f"  User {self.bed.user}\n  ProxyCommand {proxy}\n")

    def command(self, name: str, *args: str) -> list[str]:
        """A distsvc program by name, or any program by absolute path."""
        return [name if name.startswith("/") else str(BIN / name), *args]

    def popen(self, name: str, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("cwd", self.workdir)
        env = {**self.env, **kw.pop("env", {})}
        return subprocess.Popen(self.command(name, *args), env=env, **kw)

    def run(self, name: str, *args: str, input: bytes | None = b"", timeout: float = 60,
            **kw: Any) -> subprocess.CompletedProcess[bytes]:
        kw.setdefault("cwd", self.workdir)
        env = {**self.env, **kw.pop("env", {})}
        return subprocess.run(self.command(name, *args), env=env, input=input,
                              capture_output=True, timeout=timeout, **kw)


def start_daemon(client: Client) -> subprocess.Popen[bytes]:
    """A daemon for this client, as a client would spawn it; waits for its socket."""
    log = open(client.home / "daemon.log", "ab")  # noqa: SIM115 - the daemon outlives this
    daemon = client.popen("distsvc", "daemon", "--log-level", "debug", stderr=log, cwd="/")
    socket_path = client.runtime / "distsvc" / "distsvc.sock"
    deadline = time.monotonic() + 20
    while not socket_path.exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            log_text = (client.home / "daemon.log").read_text()
            raise AssertionError(f"daemon did not start: {log_text}")
        time.sleep(0.02)
    return daemon


@contextlib.contextmanager
def user(bed: sshbed.Bed, home: Path, mode: str) -> Iterator[Client]:
    """A user working without a daemon (mode "direct": DISTSVC_DAEMON=off) or through one
    ("daemon": DISTSVC_DAEMON=required, so a daemon that does not answer fails the command
    and a test cannot pass through the in-process fallback). No test may leave processes
    on the hosts."""
    client = Client(bed, home)
    client.mode = mode
    daemon = None
    if mode == "direct":
        client.env["DISTSVC_DAEMON"] = "off"
    else:
        client.env["DISTSVC_DAEMON"] = "required"
        daemon = start_daemon(client)
    try:
        yield client
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(20)
    deadline = time.monotonic() + 8
    while (stray := bed.stray_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if stray:
        subprocess.run(["pkill", "-KILL", "-u", bed.user])
        pytest.fail(f"processes left on the hosts: {stray}")


@pytest.fixture(params=["direct", "daemon"])
def client(request: pytest.FixtureRequest, bed: sshbed.Bed, tmp_path: Path) -> Iterator[Client]:
    """A user, once working without a daemon and once through one (see user())."""
    with user(bed, tmp_path / "client", request.param) as client:
        yield client


@pytest.fixture
def daemon_client(bed: sshbed.Bed, tmp_path: Path) -> Iterator[Client]:
    """A user whose commands go through a daemon, for what only a daemon does."""
    with user(bed, tmp_path / "client", "daemon") as client:
        yield client


class TcpProxy:
    """A TCP relay on 127.0.0.1 whose connections can be cut at once, like a network drop."""

    def __init__(self, address: str, port: int, listen_port: int = 0) -> None:
        import socket
        import threading

        self.target = (address, port)
        self.listener = socket.create_server(("127.0.0.1", listen_port))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.accepting = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> TcpProxy:
        self.accepting.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return
            outbound = socket.create_connection(self.target)
            self.sockets += [inbound, outbound]
            for a, b in ((inbound, outbound), (outbound, inbound)):
                t = threading.Thread(target=self._pipe, args=(a, b), daemon=True)
                t.start()
                self.threads.append(t)

    @staticmethod
    def _pipe(source: Any, sink: Any) -> None:
        import socket

        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)  # pass the end on, as a router would

    def stop_accepting(self) -> None:
        """New connections are refused; those made go on."""
        import socket

        # close() alone would leave the blocked accept() listening on in the kernel.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def cut(self) -> None:
        """The connections open now are cut, and no new ones are taken."""
        self.stop_accepting()
        self.sever()

    def sever(self) -> None:
        """The connections open now are cut; new ones are still relayed (the network is
        back at once)."""
        import socket
        import struct

        severed, self.sockets = self.sockets, []
        for s in severed:
            try:
                # Linger 0: a reset, as from a vanished peer. shutdown() wakes the relay
                # threads blocked in recv(), which close() alone would not.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


@pytest.fixture(scope="session")
def vm() -> Iterator[vmbed.VM]:
    """The QEMU VM bed (tests/vmbed.py): a pure cgroup v2 kernel, where limits are enforced."""
    yield from vmbed.vm_fixture()
