"""A test bed of real OpenSSH servers on loopback addresses (127.0.0.2, 127.0.0.3, ...).

Each host is its own `sshd -D` with its own generated host key and configuration, listening on
a free port of its own address. Everyone logs in as one unprivileged test user, made for this
bed alone (so two beds on one machine never touch each other's processes) and removed after,
whose home is a fresh directory: tests put junk in its rc files and read its process table.
Creating that user needs root; without root the end-to-end tests are skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SSHD = "/usr/sbin/sshd"
USER_PREFIX = "dsvctest"


def can_run() -> str | None:
    """Why the bed cannot start here, or None."""
    if os.geteuid() != 0:
        return "the sshd test bed needs root (it creates a test user)"
    for tool in (SSHD, shutil.which("ssh-keygen")):
        if not tool or not os.path.exists(tool):
            return f"{tool or 'ssh-keygen'} is not installed (apt-get install openssh-server)"
    return None


def descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return (path.with_suffix(".pub")).read_text().strip()


def wait_for_banner(address: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd on {address}:{port} did not start")
        time.sleep(0.05)


@dataclasses.dataclass
class Host:
    name: str
    address: str
    port: int
    host_key: str  # "ssh-ed25519 AAAA..." public key
    config: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def known_hosts_line(self) -> str:
        return f"[{self.address}]:{self.port} {self.host_key}"

    def start(self) -> None:
        with open(self.config.with_suffix(".log"), "ab") as log:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                stderr=log)
        wait_for_banner(self.address, self.port)

    def stop(self) -> None:
        """The host goes down: its server and every connection it is serving."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            sessions = descendants(self.process.pid)
            self.process.terminate()
            self.process.wait(10)
            for pid in sessions:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process = None

    @contextlib.contextmanager
    def hung(self, connections: bool = False) -> Iterator[None]:
        """The server accepts TCP connections (the kernel does) but never answers.

        With `connections`, the sshd processes serving connections already open stop too,
        as when the whole machine freezes: what runs there goes on, but nothing is heard of
        it (the kernel still acknowledges TCP, so keepalives do not notice)."""
        assert self.process is not None
        stopped = [self.process.pid]
        if connections:
            stopped += [pid for pid in descendants(self.process.pid) if _command(pid) == "sshd"]
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


@dataclasses.dataclass
class Bed:
    root: Path
    user: str
    uid: int
    home: Path  # the test user's home on the "remote" hosts (the same filesystem here)
    client_key: Path
    hosts: list[Host]

    def remote_processes(self, marker: str) -> list[str]:
        """The test user's processes whose command line contains `marker`."""
        out = subprocess.run(["ps", "-u", str(self.uid), "-ww", "-o", "pid=,args="],
                             capture_output=True, text=True).stdout
        return [line.strip() for line in out.splitlines() if marker in line]

    def stray_processes(self) -> list[str]:
        """The test user's processes other than sshd's own (which end with their client)."""
        out = subprocess.run(["ps", "-u", str(self.uid), "-ww", "-o", "pid=,args="],
                             capture_output=True, text=True).stdout
        return [line.strip() for line in out.splitlines()
                if line.split(None, 1)[1:] and not line.split(None, 1)[1].startswith("sshd")]

    def write_home_file(self, relative: str, text: str) -> Path:
        path = self.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        for p in (path, *path.relative_to(self.home).parents):
            os.chown(self.home / p, self.uid, -1)
        return path


def _remove_user(name: str) -> None:
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    subprocess.run(["userdel", name], capture_output=True)


def _remove_stale_users() -> None:
    """Users of beds whose process died without cleaning up."""
    for entry in pwd.getpwall():
        suffix = entry.pw_name.removeprefix(USER_PREFIX)
        if suffix != entry.pw_name and suffix.isdigit() and not Path(f"/proc/{suffix}").exists():
            _remove_user(entry.pw_name)


def _create_user(home: Path) -> pwd.struct_passwd:
    _remove_stale_users()
    name = f"{USER_PREFIX}{os.getpid()}"
    _remove_user(name)
    subprocess.run(["useradd", "--system", "--shell", "/bin/bash", "--home-dir", str(home),
                    "--no-create-home", name], check=True, capture_output=True)
    # A locked account ("!") may not log in with keys when PAM is off; "*" has no password.
    subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
    return pwd.getpwnam(name)


def sshd_settings(root: Path, user: str, key: Path, max_startups: str | None = None,
                  max_sessions: int | None = None) -> str:
    """sshd_config lines of a bed's server, all but ListenAddress (bench/ reuses them).

    MaxStartups and MaxSessions stay at OpenSSH's defaults (10:30:100 and 10), as on real
    hosts, unless a caller says otherwise (and why)."""
    limits = "".join([f"MaxStartups {max_startups}\n" if max_startups else "",
                      f"MaxSessions {max_sessions}\n" if max_sessions else ""])
    return limits + f"""\
HostKey {key}
PidFile none
AuthorizedKeysFile {root}/authorized_keys
AllowUsers {user}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitUserRC yes
PrintMotd no
PrintLastLog no
UseDNS no
LogLevel ERROR
"""


def _sshd_config(root: Path, user: str, host: str, address: str, port: int, key: Path,
                 **limits: Any) -> Path:
    path = root / f"sshd-{host}.conf"
    path.write_text(f"ListenAddress {address}:{port}\n" + sshd_settings(root, user, key, **limits))
    return path


def _new_host(root: Path, user: str, name: str, address: str, **limits: Any) -> Host:
    port = free_port(address)
    for old in (root / f"hostkey-{name}", root / f"hostkey-{name}.pub"):  # a name reused
        old.unlink(missing_ok=True)
    key_public = keygen(root / f"hostkey-{name}")
    config = _sshd_config(root, user, name, address, port, root / f"hostkey-{name}", **limits)
    return Host(name, address, port, " ".join(key_public.split()[:2]), config)


@contextlib.contextmanager
def extra_host(bed: Bed, name: str, address: str, *, max_sessions: int | None = None,
               max_startups: str | None = None) -> Iterator[Host]:
    """One more server for a test that needs settings of its own (it says why), stopped after.
    Clients must add its known_hosts_line themselves."""
    host = _new_host(bed.root, bed.user, name, address, max_sessions=max_sessions,
                     max_startups=max_startups)
    host.start()
    try:
        yield host
    finally:
        host.stop()
        for path in bed.root.glob(f"hostkey-{name}*"):  # the next test may use the name
            path.unlink()


@contextlib.contextmanager
def running(count: int = 4) -> Iterator[Bed]:
    root = Path(tempfile.mkdtemp(prefix="distsvc-sshbed-"))
    root.chmod(0o755)  # the test user must reach its home and the authorized keys
    hosts: list[Host] = []
    user: pwd.struct_passwd | None = None
    try:
        home = root / "home"
        home.mkdir()
        user = _create_user(home)
        os.chown(home, user.pw_uid, user.pw_gid)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        client_key = root / "client_ed25519"
        (root / "authorized_keys").write_text(keygen(client_key) + "\n")
        (root / "authorized_keys").chmod(0o644)
        for index in range(count):
            host = _new_host(root, user.pw_name, f"h{index + 1}", f"127.0.0.{index + 2}")
            host.start()
            hosts.append(host)
        yield Bed(root, user.pw_name, user.pw_uid, home, client_key, hosts)
    finally:
        for host in hosts:
            host.stop()
        if user is not None:
            _remove_user(user.pw_name)
        shutil.rmtree(root, ignore_errors=True)
