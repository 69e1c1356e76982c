"""A throwaway container that boots a real systemd, for tests that need systemd as PID 1.

The machine running the tests has systemd installed but not running as PID 1, and starting it on
the machine's own root is out of the question (its boot-time tmpfiles clean-up would wipe /tmp
for everyone). So `booted()` does this instead:

1. mounts an overlayfs whose lower layer is the machine's ``/`` and whose upper layer is a fresh
   directory under /var/tmp/distsvc-nspawn-XXXXXXXX/ (not /tmp: nothing cleans it). Every
   installed package and this project's venv are visible inside, and every write made inside
   lands in the upper layer only. Nothing is downloaded;
2. masks a few units that only slow the boot down (`DEFAULT_MASK`: PostgreSQL, apt timers...);
3. starts ``systemd-nspawn --boot --private-network --register=no --keep-unit`` from a shell that
   first moved itself into a cgroup of its own (``/sys/fs/cgroup/unified/NAME`` and
   ``/sys/fs/cgroup/systemd/NAME`` on this hybrid layout, ``/sys/fs/cgroup/NAME`` on a pure
   cgroup2 one), so the container's units land under that directory, not at the machine's root;
4. waits for ``systemctl is-system-running --wait`` (``running`` or ``degraded``), creates the
   test user with a home, enables lingering and waits until the user's manager answers;
5. afterwards, even when the body raised or the run was interrupted (Ctrl-C; SIGTERM, which
   `booted` turns into KeyboardInterrupt while the container is up unless SIGTERM is handled
   already): kills the commands started in the container from the host (see `_kill_entered`),
   powers the container off (SIGRTMIN+4 to its PID 1; SIGKILL after `POWEROFF_TIMEOUT`),
   unmounts the overlay, removes the cgroup directories and the temporary directory.

A test run killed outright (SIGKILL) cannot tear down, but parent-death signals stop what it
started: nspawn gets SIGTERM (and powers the container off), every nsenter SIGKILL, and every
command SIGKILL when its nsenter dies. The overlay mount, cgroup directories and temporary
directory it leaves are removed by `cleanup_stale()`, which `booted()` calls first; it only
touches beds whose owning process (PID and start time in WORKDIR/bed.json) is gone. Mind that
a parent-death signal follows the THREAD that started the process: boot and start long-running
commands from a thread that lives as long as they do (pytest's main thread does).

Commands run inside through ``nsenter -a -t PID1`` (all of the container's namespaces; entering
its mount namespace also makes its root the root and ``/`` the working directory), as the test
user through ``setpriv --reuid --regid --init-groups`` and ``env -i``, with HOME, USER, LOGNAME,
XDG_RUNTIME_DIR=/run/user/UID, DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/UID/bus and a PATH
that starts with this project's venv bin directory (``python3`` is the venv's; ``distsvc``
imports). ``runuser``/PAM and ``machinectl shell`` are not used (the latter needs
registration with machined, which is not running here).

Seeing and reaching the container's files from the host (checked on Debian 12, kernel 6.x):

- ``Container.root`` is the merged overlay. It shows the container's root file system, but NOT
  the file systems nspawn and systemd mount over it inside: /run (so /run/user/UID), /tmp,
  /dev, /proc, /sys are tmpfs or API mounts of the container's own and look empty or stale
  through ``root``.
- ``Container.host_path(p)`` is ``/proc/PID1/root/p``: it sees everything the container sees,
  /run/user/UID included. (Absolute symlinks met on that path resolve against the HOST's root.)
- A unix socket bound inside is connectable from the host by either path: ``root / "home/..."``
  for a socket on the overlay, ``host_path("/run/user/UID/x.sock")`` for one on a tmpfs (path
  sockets are found through the inode, so the private network namespace does not matter;
  abstract sockets, by contrast, are per network namespace and NOT reachable). Mind the 107
  byte limit of a socket path. Connecting from inside works too:
  ``c.run_as_user(["python3", "-c", ...])``.

Gotchas:

- Processes started through nsenter stay in the cgroup of the process that started them (seen
  from inside as ``/../..``): they belong to no unit of the container. ``systemd-run --user``
  (transient services and ``--scope``) works from them all the same.
- ``nsenter`` does not forward signals to the command it forks into the PID namespace;
  `ContainerProcess` (returned by the popen methods) sends them to that command instead.
- The lower layer is the live root file system: files changed on the host during a test may or
  may not show through (overlayfs leaves that undefined); write what the test needs through
  the container instead.
- The container has the host's machine ID and hostname; its journal is volatile
  (/run/log/journal inside), and ``journalctl --user`` works for lingering users.
- journald tells which unit wrote a line from the writer's /proc/PID/cgroup when it reads the
  line: a process that exits right after writing (``sh -c 'echo x'``) often (1 in 5 here)
  leaves an entry without _SYSTEMD_USER_UNIT, which ``journal(unit)`` does not find. Keep
  such a process alive a moment (``...; sleep 1``) or look for the line otherwise.
- With ``Accept=yes`` the manager holds each connection until its service instance exits:
  a client waiting for EOF waits for the instance, not for the instance to close its fds.
- A transient unit's description, which its manager logs ("Started X - CMDLINE"), is its
  command line: `wait_for_journal` for text that is also in the command matches that line.

An SSH host with a systemd user manager (`start_sshd`, `sshd`, `booted_with_sshd`): the
container's own sshd (the machine's /usr/sbin/sshd through the overlay, a system unit
``distsvc-sshd-PORT.service`` inside, its own host key, OpenSSH's defaults) on 127.0.0.1:2222
of the container's network namespace, reached from the machine at 127.0.0.9:PORT through a
`Forwarder` thread of the test process; the test user logs in with a key in its
~/.ssh/authorized_keys. What was found doing it (Debian 12, systemd 252, OpenSSH 9.2):

- PAM works inside (no user namespace; nspawn keeps CAP_AUDIT_CONTROL, so pam_loginuid can
  write /proc/self/loginuid): with UsePAM yes, pam_systemd registers a logind session
  (``session-N.scope`` under ``user-UID.slice``) even for a non-interactive ``ssh host CMD``,
  and sets XDG_RUNTIME_DIR=/run/user/UID, DBUS_SESSION_BUS_ADDRESS, XDG_SESSION_ID/CLASS/TYPE;
  ``systemd-run --user`` then works as is. logind removes the session once the connection
  is closed and its last process gone; what it left running (``nohup sleep &``) stays, in the
  then "abandoned" session scope (KillUserProcesses=no), and units of the lingering user's
  manager are not touched by either.
- With ``use_pam=False`` the session has no XDG_RUNTIME_DIR nor bus address (the client must
  set them to /run/user/UID and its ``bus``, and the manager answers), its processes stay in
  the sshd unit's cgroup (so stopping the unit ends them), and sshd refuses the account's
  locked password field ``!`` even with a key: `start_sshd` sets it to ``*`` then.
- The machine's own enabled ssh.service starts inside too, on 0.0.0.0:22 with the MACHINE's
  host keys: `booted_with_sshd` masks it, and ours listens on 2222 anyway.
- /run is the container's own tmpfs: sshd's privilege separation directory /run/sshd must be
  made (even ``sshd -t`` wants it), and not as the unit's RuntimeDirectory= (stopping one unit
  would remove it from under another sshd).
- The session's PATH is Debian's default (/usr/local/bin:/usr/bin:/bin:/usr/games): no venv,
  unlike `Container.run_as_user`. Its SSH_CONNECTION is ``127.0.0.1 P 127.0.0.1 2222`` (the
  forwarder's side inside), not the address and port the client dialled.
- The forwarder: setns(2) moves one THREAD into a network namespace, and a socket stays in
  the namespace it was made in, whichever thread uses it; so the listening socket is made
  first, on the machine's side, and the accepting thread then enters the container's and
  makes each outgoing socket there. It accepts before it connects: a client of a stopped sshd
  sees the connection closed before any banner, not "connection refused" (after `stop()`
  the port refuses). EOF is passed on as shutdown(SHUT_WR), each direction on its own.

Wrapping this in a pytest fixture (in conftest.py)::

    import container

    @pytest.fixture(scope="session")
    def systemd_container() -> Iterator[container.Container]:
        yield from container.container_fixture()

and the SSH host with its container, in a test module (see `sshd_fixture`)::

    @pytest.fixture(scope="module")
    def sd() -> Iterator[tuple[container.Container, container.SshHost]]:
        yield from container.sshd_fixture()
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

BASE = Path("/var/tmp")
"""Where the beds' temporary directories go (on the root file system, cleaned by nobody)."""
PREFIX = "distsvc-nspawn-"
"""Prefix of a bed's temporary directory and of its cgroup directories."""
SYSTEMD = "/lib/systemd/systemd"
PROJECT = Path(__file__).resolve().parents[1]
VENV_BIN = (Path(sys.prefix) if sys.prefix != sys.base_prefix else PROJECT / ".venv") / "bin"
"""The venv's bin directory; the container sees the same path (its lower layer is /)."""
PATH = f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SLURM_UNITS = ("munge.service", "mariadb.service", "slurmdbd.service", "slurmctld.service",
               "slurmd.service")
"""The cluster's units (installed for tests/slurmbed.py): masked except in its containers."""
DEFAULT_MASK = (
    "postgresql.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "man-db.timer",
    *SLURM_UNITS,
)
"""Units masked inside by default: enabled on the machine, useless in a test container, slow."""
POWEROFF_TIMEOUT = 20.0
# How commands enter the container: nsenter dies with the thread that started it, and the
# command with its nsenter (each a parent-death signal), so none outlives a killed test run.
PDEATHSIG = ("setpriv", "--pdeathsig", "KILL")
ENTER = (*PDEATHSIG, "nsenter", "-a", "-t")


class BootError(RuntimeError):
    """The container did not boot, or its test user's manager did not come up."""


class TeardownError(RuntimeError):
    """Something of the container could not be removed (its message says what)."""


class CommandFailed(subprocess.CalledProcessError):
    """A command inside the container exited non-zero; its message shows its output."""

    def __str__(self) -> str:
        def show(data: str | bytes | None) -> str:
            if isinstance(data, bytes):
                data = data.decode(errors="replace")
            return (data or "").strip()[-4000:]

        return (f"{shlex.join(str(a) for a in self.cmd)} exited {self.returncode}\n"
                f"--- stdout\n{show(self.stdout)}\n--- stderr\n{show(self.stderr)}")


# --- what the machine can do ---------------------------------------------------------------


def cgroup_roots() -> list[Path]:
    """The cgroup hierarchies to make the bed's cgroup in: the cgroup2 one and the named
    ``systemd`` v1 one, whichever are mounted (both on a hybrid layout)."""
    roots = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, where, fstype, options = line.split()[:4]
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options.split(",")):
            roots.append(Path(where.replace("\\040", " ")))
    return sorted(set(roots))


def can_boot() -> str | None:
    """The reason this machine cannot boot a test container, or None if it can."""
    if sys.platform != "linux":
        return "booting a systemd container needs Linux"
    if os.geteuid() != 0:
        return "booting a systemd container needs root (mount, cgroups, nspawn)"
    for tool in ("systemd-nspawn", "nsenter", "setpriv", "mount", "umount"):
        if not shutil.which(tool):
            package = "systemd-container" if tool == "systemd-nspawn" else "util-linux"
            return f"{tool} is not installed (apt-get install {package})"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is not installed (apt-get install systemd)"
    filesystems = Path("/proc/filesystems").read_text().split()
    if "overlay" not in filesystems:
        subprocess.run(["modprobe", "overlay"], capture_output=True)
        if "overlay" not in Path("/proc/filesystems").read_text().split():
            return "the kernel has no overlayfs"
    if not cgroup_roots():
        return "no cgroup2 nor name=systemd cgroup hierarchy is mounted"
    root_dev = os.stat("/").st_dev
    for path in (BASE, VENV_BIN):
        if not path.is_dir() or os.stat(path).st_dev != root_dev:
            return f"{path} is not on the root file system, so the overlay would not show it"
    return None


# --- processes -----------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _start_time(pid: int) -> int | None:
    """The start time of a process in clock ticks since boot (tells a reused PID apart)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int | None, start_time: int | None) -> bool:
    return pid is not None and start_time is not None and _start_time(pid) == start_time


class ContainerProcess(subprocess.Popen[Any]):
    """A process started inside the container by ``nsenter``.

    nsenter forks the command into the container's PID namespace and waits for it without
    forwarding signals; this Popen sends them (``send_signal``, ``terminate``, ``kill``) to the
    command itself, whose exit status nsenter then passes on (a command killed by SIGTERM gives
    returncode -15, as usual)."""

    def inner_pid(self, timeout: float = 2.0) -> int | None:
        """The command's PID as seen from the host, or None once it is gone."""
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            children = _children(self.pid)
            if children:
                return children[0]
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)
        return None

    def pid_inside(self) -> int | None:
        """The command's PID inside the container."""
        pid = self.inner_pid()
        nspid = _status(pid).get("NSpid", "") if pid else ""
        return int(nspid.split()[-1]) if nspid else None

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        pid = self.inner_pid()
        if pid is None:
            super().send_signal(sig)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if sig == signal.SIGCONT:  # nsenter stopped itself when its command stopped
            super().send_signal(sig)


# --- the container -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class User:
    """A user made inside the container."""

    name: str
    uid: int
    gid: int
    home: str


@dataclasses.dataclass
class Container:
    """A booted container. Paths called ``path`` or ``home`` are paths inside it."""

    name: str
    """The machine name (``distsvc-XXXXXXXX``)."""
    pid: int
    """PID 1 of the container, as seen from the host."""
    workdir: Path
    """The bed's temporary directory on the host (upper/, work/, root/, console.log)."""
    cgroups: list[Path]
    """The cgroup directories the container runs in, one per hierarchy."""
    nspawn: subprocess.Popen[bytes]
    users: dict[str, User] = dataclasses.field(default_factory=dict)
    user: str = ""
    """The test user made by `booted`."""
    system_state: str = ""
    """What ``systemctl is-system-running`` said once booted: ``running`` or ``degraded``
    (see `failed_units` and `debug_report` for why)."""

    @property
    def root(self) -> Path:
        """The merged overlay: the container's root file system as seen from the host (but
        not the file systems mounted over it inside: /run, /tmp, /dev... see `host_path`)."""
        return self.workdir / "root"

    @property
    def console_log(self) -> Path:
        """What systemd-nspawn and the container's console printed."""
        return self.workdir / "console.log"

    @property
    def uid(self) -> int:
        return self.users[self.user].uid

    @property
    def gid(self) -> int:
        return self.users[self.user].gid

    @property
    def home(self) -> str:
        return self.users[self.user].home

    def host_path(self, path: str | os.PathLike[str]) -> Path:
        """The host's path to `path` inside: ``/proc/PID/root/...``, which sees the container's
        own mounts too (/run/user/UID, /tmp). Unix sockets there are connectable from the host."""
        return Path(f"/proc/{self.pid}/root") / str(path).lstrip("/")

    def runtime_dir(self, user: str | None = None) -> str:
        """XDG_RUNTIME_DIR of `user` (default: the test user), inside."""
        return f"/run/user/{self.users[user or self.user].uid}"

    # commands

    def _root_argv(self, cmd: Sequence[str], env: Mapping[str, str] | None,
                   cwd: str | None) -> list[str]:
        environ = {"PATH": PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root",
                   "LANG": "C.UTF-8", **(env or {})}
        return [*ENTER, str(self.pid), *PDEATHSIG, "env", "-i", "-C", cwd or "/",
                *(f"{k}={v}" for k, v in environ.items()), *map(str, cmd)]

    def user_env(self, user: str | None = None) -> dict[str, str]:
        """The environment commands of `user` (default: the test user) get."""
        u = self.users[user or self.user]
        runtime = f"/run/user/{u.uid}"
        return {"PATH": PATH, "HOME": u.home, "USER": u.name, "LOGNAME": u.name,
                "SHELL": "/bin/bash", "LANG": "C.UTF-8", "XDG_RUNTIME_DIR": runtime,
                "DBUS_SESSION_BUS_ADDRESS": f"unix:path={runtime}/bus"}

    def _user_argv(self, cmd: Sequence[str], user: str | None, env: Mapping[str, str] | None,
                   cwd: str | None) -> list[str]:
        u = self.users[user or self.user]
        environ = {**self.user_env(u.name), **(env or {})}
        return [*ENTER, str(self.pid), *PDEATHSIG,
                f"--reuid={u.uid}", f"--regid={u.gid}", "--init-groups",
                "env", "-i", "-C", cwd or u.home,
                *(f"{k}={v}" for k, v in environ.items()), *map(str, cmd)]

    @staticmethod
    def _communicate(argv: list[str], cmd: Sequence[str], *, check: bool, timeout: float,
                     input: str | bytes | None) -> subprocess.CompletedProcess[Any]:
        text = not isinstance(input, bytes)
        with ContainerProcess(argv, stdin=subprocess.PIPE if input is not None
                              else subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=text) as proc:
            try:
                out, err = proc.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise
        done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        if check and done.returncode:
            raise CommandFailed(done.returncode, list(cmd), out, err)
        return done

    def run(self, cmd: Sequence[str], *, check: bool = True, timeout: float = 60,
            input: str | bytes | None = None, env: Mapping[str, str] | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess[Any]:
        """Run `cmd` as root inside (clean environment plus `env`, working directory `cwd`
        or /), capturing its output: str, or bytes when `input` is bytes. On timeout the
        command is killed and TimeoutExpired raised; with `check`, a non-zero exit raises
        `CommandFailed`."""
        return self._communicate(self._root_argv(cmd, env, cwd), cmd, check=check, timeout=timeout,
                                 input=input)

    def run_as_user(self, cmd: Sequence[str], *, user: str | None = None, check: bool = True,
                    timeout: float = 60, input: str | bytes | None = None,
                    env: Mapping[str, str] | None = None,
                    cwd: str | None = None) -> subprocess.CompletedProcess[Any]:
        """Like `run`, as `user` (default: the test user) in its home, with its environment
        (`user_env`) plus `env`."""
        return self._communicate(self._user_argv(cmd, user, env, cwd), cmd, check=check,
                                 timeout=timeout, input=input)

    def popen(self, cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: str | None = None, **kwargs: Any) -> ContainerProcess:
        """Start `cmd` as root inside and return at once (Popen keyword arguments allowed)."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return ContainerProcess(self._root_argv(cmd, env, cwd), **kwargs)

    def popen_as_user(self, cmd: Sequence[str], *, user: str | None = None,
                      env: Mapping[str, str] | None = None, cwd: str | None = None,
                      **kwargs: Any) -> ContainerProcess:
        """Start a long-running `cmd` as `user` (default: the test user); signals sent to the
        returned process reach `cmd` itself. Whatever is left runs until the container stops."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return ContainerProcess(self._user_argv(cmd, user, env, cwd), **kwargs)

    # users and files

    def add_user(self, name: str, *, linger: bool = False, timeout: float = 30) -> tuple[int, int]:
        """Create `name` with a home inside; with `linger`, enable lingering and wait until
        its user manager answers. Returns (uid, gid)."""
        if self.run(["getent", "passwd", name], check=False).returncode == 0:
            raise ValueError(f"user {name} already exists in the container (and on the host?)")
        self.run(["useradd", "--create-home", "--user-group", "--shell", "/bin/bash", name])
        entry = self.run(["getent", "passwd", name]).stdout.strip().split(":")
        user = User(name, int(entry[2]), int(entry[3]), entry[5])
        self.users[name] = user
        if linger:
            self.run(["loginctl", "enable-linger", name])
            self.wait_for_user_manager(name, timeout=timeout)
        return user.uid, user.gid

    def wait_for_user_manager(self, user: str | None = None, timeout: float = 30) -> str:
        """Wait until the user manager of a lingering `user` has finished starting up;
        returns its state (``running`` or ``degraded``)."""
        up, state = _poll_manager(
            lambda left: self.run_as_user(["systemctl", "--user", "is-system-running", "--wait"],
                                          user=user, check=False, timeout=left),
            time.monotonic() + timeout, pause=0.1)
        if up:
            return state
        raise BootError(f"the user manager of {user or self.user} did not come up "
                        f"(state {state!r})\n{self.debug_report()}")

    def write_file(self, path: str, text: str | bytes, owner: str | None = None,
                   mode: int | None = None) -> Path:
        """Write `text` to `path` inside, as root, making missing parent directories. With
        `owner`, the file and the directories made are chowned to that user and its group.
        Returns the file's path on the host (`host_path`)."""
        script = (
            "import os, sys\n"
            "path, uid, gid, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]\n"
            "made, d = [], os.path.dirname(path)\n"
            "while d and not os.path.isdir(d):\n"
            "    made.append(d); d = os.path.dirname(d)\n"
            "for d in reversed(made):\n"
            "    os.mkdir(d)\n"
            "    if uid >= 0: os.chown(d, uid, gid)\n"
            "with open(path, 'wb') as f: f.write(sys.stdin.buffer.read())\n"
            "if uid >= 0: os.chown(path, uid, gid)\n"
            "if mode: os.chmod(path, int(mode, 8))\n"
        )
        uid, gid = -1, -1
        if owner is not None:
            uid, gid = self.users[owner].uid, self.users[owner].gid
        data = text.encode() if isinstance(text, str) else text
        self.run(["/usr/bin/python3", "-c", script, path, str(uid), str(gid),
                  f"{mode:o}" if mode is not None else ""], input=data)
        return self.host_path(path)

    def read_file(self, path: str) -> str:
        """The text of `path` inside (read by root inside, so symlinks resolve as inside)."""
        return str(self.run(["cat", path]).stdout)

    # systemd

    def journal(self, unit: str, user: bool = True, output: str = "json", *,
                as_user: str | None = None) -> list[dict[str, Any]]:
        """The journal entries of `unit`: ``journalctl --user -u UNIT`` as the test user (or
        `as_user`) when `user`, else the system journal's ``journalctl -u UNIT`` as root.
        With ``output="json"`` each entry is a dict of its fields (MESSAGE given as bytes
        in the journal is decoded); with any other output mode each line becomes
        ``{"MESSAGE": line}``."""
        cmd = ["journalctl", "--no-pager", "-o", output, "-u", unit]
        if user:
            done = self.run_as_user(["journalctl", "--user", *cmd[1:]], user=as_user)
        else:
            done = self.run(cmd)
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        if output != "json":
            return [{"MESSAGE": line} for line in lines if not line.startswith("-- ")]
        entries = [json.loads(line) for line in lines]
        for entry in entries:
            if isinstance(entry.get("MESSAGE"), list):
                entry["MESSAGE"] = bytes(entry["MESSAGE"]).decode(errors="replace")
        return entries

    def wait_for_journal(self, unit: str, text: str, user: bool = True, timeout: float = 10,
                         *, count: int = 1, as_user: str | None = None) -> list[dict[str, Any]]:
        """Poll `journal` until `count` entries of `unit` have `text` in their MESSAGE (journald
        takes a moment); returns all the unit's entries then. Mind that a transient unit's
        description, logged by its manager ("Started ..."), is its command line."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self.journal(unit, user, as_user=as_user)
            if sum(text in str(e.get("MESSAGE", "")) for e in entries) >= count:
                return entries
            if time.monotonic() > deadline:
                raise AssertionError(f"not {count} journal entries of {unit} say {text!r}: "
                                     f"{[e.get('MESSAGE') for e in entries]}")
            time.sleep(0.1)

    def failed_units(self, user: str | None = None) -> list[str]:
        """The failed units of the system manager, or of `user`'s manager."""
        cmd = ["systemctl", "--failed", "--plain", "--no-legend", "--no-pager"]
        if user is None:
            done = self.run(cmd, check=False)
        else:
            done = self.run_as_user([cmd[0], "--user", *cmd[1:]], user=user, check=False)
        return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]

    def debug_report(self) -> str:
        """The system's and each user manager's state and failed units, and the end of the
        console log: what to print when something inside misbehaves."""
        lines = []
        with contextlib.suppress(Exception):
            state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
            lines.append(f"system: {state}; failed: {self.failed_units()}")
            for name in self.users:
                if self.host_path(f"/run/user/{self.users[name].uid}/bus").exists():
                    state = self.run_as_user(["systemctl", "--user", "is-system-running"],
                                             user=name, check=False).stdout.strip()
                    lines.append(f"user {name}: {state}; failed: {self.failed_units(name)}")
        with contextlib.suppress(OSError):
            log = self.console_log.read_text(errors="replace").splitlines()[-30:]
            lines += ["--- console (end)", *log]
        return "\n".join(lines)


# --- booting and tearing down --------------------------------------------------------------


@dataclasses.dataclass
class _Bed:
    """What `booted` made on the host, recorded in WORKDIR/bed.json for `cleanup_stale`."""

    name: str
    workdir: Path
    cgroups: list[Path]
    owner: int = dataclasses.field(default_factory=os.getpid)
    owner_start: int | None = dataclasses.field(default_factory=lambda: _start_time(os.getpid()))
    nspawn: int | None = None
    nspawn_start: int | None = None

    @property
    def root(self) -> Path:
        return self.workdir / "root"

    def save(self) -> None:
        record = {**dataclasses.asdict(self), "workdir": str(self.workdir),
                  "cgroups": [str(c) for c in self.cgroups]}
        tmp = self.workdir / "bed.json.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(self.workdir / "bed.json")

    @classmethod
    def load(cls, workdir: Path) -> _Bed:
        record = json.loads((workdir / "bed.json").read_text())
        record["workdir"] = Path(record["workdir"])
        record["cgroups"] = [Path(c) for c in record["cgroups"]]
        bed = cls(**record)
        if bed.workdir != workdir or not bed.workdir.name.startswith(PREFIX):
            raise ValueError(f"{workdir}/bed.json describes another directory")
        return bed


def _mounts_under(path: Path) -> list[str]:
    """The mount points at or below `path`."""
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == str(path) or point.startswith(f"{path}/"):
            points.append(point)
    return points


def _mounted(path: Path) -> bool:
    return str(path) in _mounts_under(path)


def _container_init(nspawn_pid: int) -> int | None:
    """The container's PID 1 once it runs systemd: the child of nspawn that is PID 1 of a
    PID namespace of its own."""
    for child in _children(nspawn_pid):
        status = _status(child)
        if status.get("NSpid", "").split()[-1:] == ["1"] and status.get("Name") == "systemd":
            return child
    return None


def _pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _running(pid: int) -> bool:
    """Whether `pid` exists and has not exited (a zombie has)."""
    return _status(pid).get("State", "Z")[:1] not in ("Z", "X")


def _entering(init: int) -> set[int]:
    """The nsenter processes outside the container that run a command in it (`ENTER`), found
    by their command line: also one that has not forked its command into the container yet,
    which a look at the container's PID namespace cannot see."""
    ns = _pid_ns(init)
    marker = b"\0nsenter\0-a\0-t\0" + str(init).encode() + b"\0"
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in b"\0" + cmdline and _pid_ns(int(entry.name)) not in (None, ns):
            found.add(int(entry.name))
    return found


def _kill_entered(init: int) -> None:
    """Kill the commands started in the container from outside (by ``nsenter``), so that their
    nsenter reaps them.

    Left to the container's shutdown, they go wrong: a command whose parent is outside the
    container's PID namespace is not reparented to the container's PID 1 when that parent
    dies but to the host's, so the shutdown waits (10 s) for a zombie it cannot reap. And
    nsenter waits for its command with WUNTRACED and stops itself when the command stops,
    which the shutdown does to every process (SIGSTOP, signal, SIGCONT) without being able to
    resume nsenter: its killed command then stays a zombie, and the dying PID namespace, PID 1
    and nspawn with it, for good (or the shutdown's 10 s). So: SIGKILL the commands, SIGCONT
    their nsenter, until each nsenter is gone. Our own nsenters are found by command line
    (`_entering`), since one started just before the teardown (``popen`` returns before it
    forks its command) may fork it only after a look into the container's PID namespace, and
    the shutdown then meets it (1 teardown in 2 with a ``popen`` right before, 1 in 30 in
    test_container_bed)."""
    ns = _pid_ns(init)
    if ns is None:
        return
    entered = {}  # any command entered from outside, by whatever: command -> its parent
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != init and _pid_ns(int(entry.name)) == ns:
            ppid = int(_status(int(entry.name)).get("PPid", "0") or 0)
            if ppid and _pid_ns(ppid) not in (None, ns):
                entered[int(entry.name)] = ppid
    ours = _entering(init)
    deadline = time.monotonic() + 2
    while (ours or entered) and time.monotonic() < deadline:
        for pid in [*entered, *(child for outer in ours for child in _children(outer))]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Again on every round: an nsenter may stop itself only after a first SIGCONT.
        for parent in {*entered.values(), *ours}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(parent, signal.SIGCONT)
        time.sleep(0.01)
        ours = {pid for pid in ours if _running(pid)}
        entered = {pid: ppid for pid, ppid in entered.items() if os.path.exists(f"/proc/{pid}")}


def _stop(bed: _Bed, nspawn: subprocess.Popen[bytes] | None, errors: list[str]) -> None:
    """Power the container off and wait for nspawn (killing both after POWEROFF_TIMEOUT)."""
    if not _alive(bed.nspawn, bed.nspawn_start):
        return
    assert bed.nspawn is not None

    def gone(timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        released = time.monotonic()
        while time.monotonic() < deadline:
            if nspawn is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    nspawn.wait(0.05)
            if not _alive(bed.nspawn, bed.nspawn_start):
                return True
            time.sleep(0.05)
            if init is not None and time.monotonic() > released + 0.5:
                _kill_entered(init)  # any started meanwhile
                released = time.monotonic()
        return False

    init = _container_init(bed.nspawn)
    if init is not None:
        _kill_entered(init)
        os.kill(init, signal.SIGRTMIN + 4)  # systemd: poweroff
    else:
        os.kill(bed.nspawn, signal.SIGTERM)  # nspawn: ask the container to stop
    if gone(POWEROFF_TIMEOUT):
        return
    errors.append(f"the container did not power off within {POWEROFF_TIMEOUT:.0f} s: killed")
    init = _container_init(bed.nspawn)
    if init is not None:
        os.kill(init, signal.SIGKILL)  # kills its whole PID namespace
    if not gone(5):
        os.kill(bed.nspawn, signal.SIGKILL)
        if not gone(5):
            errors.append(f"systemd-nspawn (PID {bed.nspawn}) would not die")


def _unmount(bed: _Bed, errors: list[str]) -> None:
    for attempt in range(20):
        if not _mounted(bed.root):
            return
        lazy = ["-l"] if attempt == 19 else []
        done = subprocess.run(["umount", *lazy, str(bed.root)], capture_output=True, text=True)
        if done.returncode and attempt == 19:
            errors.append(f"umount {bed.root}: {done.stderr.strip()}")
        time.sleep(0.1 if done.returncode else 0)
    if _mounted(bed.root):
        errors.append(f"{bed.root} is still mounted")


def _remove_cgroups(bed: _Bed, errors: list[str]) -> None:
    for top in bed.cgroups:
        if top.parent not in cgroup_roots() or not top.name.startswith(PREFIX):
            errors.append(f"not removing {top}: not a bed's cgroup")
            continue
        deadline = time.monotonic() + 5
        while top.exists():
            dirs = sorted((d for d in top.rglob("*") if d.is_dir()),
                          key=lambda d: len(d.parts), reverse=True)
            try:
                for d in [*dirs, top]:
                    d.rmdir()
            except OSError as e:
                if time.monotonic() > deadline:
                    errors.append(f"cannot remove cgroup {e.filename}: {e.strerror}")
                    break
                kill = top / "cgroup.kill"  # cgroup2: whatever is left there is ours
                if time.monotonic() > deadline - 3 and kill.exists():
                    with contextlib.suppress(OSError):
                        kill.write_text("1")
                time.sleep(0.05)


def _teardown(bed: _Bed, nspawn: subprocess.Popen[bytes] | None) -> list[str]:
    """Remove everything of `bed`; returns what went wrong (empty when all went)."""
    errors: list[str] = []
    for step in (functools.partial(_stop, bed, nspawn, errors),
                 functools.partial(_unmount, bed, errors),
                 functools.partial(_remove_cgroups, bed, errors)):
        try:
            step()
        except Exception as e:  # go on with the other steps whatever happens
            errors.append(f"{type(e).__name__}: {e}")
    with contextlib.suppress(OSError):  # nspawn's own, left when it is killed
        Path("/run/systemd/nspawn/propagate", bed.name).rmdir()
    if _mounts_under(bed.workdir):  # rmtree would go down into them
        errors.append(f"not removing {bed.workdir}: {_mounts_under(bed.workdir)} mounted")
    else:
        shutil.rmtree(bed.workdir, onerror=lambda _f, p, e: errors.append(f"rm {p}: {e[1]}"))
    return errors


def leftovers(c: Container) -> list[str]:
    """What is left on the host of a container that was torn down (empty when nothing):
    its nspawn process, its overlay mount, its cgroup directories, its temporary directory."""
    found = []
    if c.nspawn.poll() is None:
        found.append(f"systemd-nspawn (PID {c.nspawn.pid}) is running")
    found += [f"mounted: {line}" for line in Path("/proc/self/mounts").read_text().splitlines()
              if str(c.workdir) in line]
    found += [f"cgroup: {d}" for d in c.cgroups if d.exists()]
    if c.workdir.exists():
        found.append(f"directory: {c.workdir}")
    return found


def cleanup_stale() -> list[str]:
    """Tear down the beds left by test runs that died without tearing down (their owner
    process is gone); returns their directories. Beds of live processes are left alone."""
    cleaned = []
    for workdir in sorted(BASE.glob(PREFIX + "*")):
        try:
            bed = _Bed.load(workdir)
        except (OSError, ValueError, TypeError, KeyError):
            continue  # not one of ours, or being made right now
        if _alive(bed.owner, bed.owner_start):
            continue
        _teardown(bed, None)
        cleaned.append(str(workdir))
    return cleaned


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Make SIGTERM raise KeyboardInterrupt while the container is up, unless someone
    already handles SIGTERM or this is not the main thread: the teardown runs, and pytest
    stops the session as on Ctrl-C (after a SystemExit it would go on to the next test)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def leave(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _mask(root: Path, units: Sequence[str]) -> None:
    unit_dir = root / "etc/systemd/system"
    for unit in units:
        link = unit_dir / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")


def _start(bed: _Bed, mask: Sequence[str]) -> subprocess.Popen[bytes]:
    for d in ("upper", "work", "root"):
        (bed.workdir / d).mkdir(mode=0o755)
    bed.save()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir=/,upperdir={bed.workdir}/upper,workdir={bed.workdir}/work",
                    str(bed.root)], check=True, capture_output=True)
    _mask(bed.root, mask)
    for cgroup in bed.cgroups:
        cgroup.mkdir()
    # The shell joins the cgroups, then becomes nspawn (with a parent-death signal: if the test
    # run dies, nspawn gets SIGTERM and powers the container off).
    script = ('for f in "$@"; do shift; [ "$f" = -- ] && break; '
              'echo $$ > "$f" || exit 125; done; exec "$@"')
    argv = ["sh", "-c", script, "sh", *(str(c / "cgroup.procs") for c in bed.cgroups), "--",
            "setpriv", "--pdeathsig", "TERM",
            "systemd-nspawn", "--directory", str(bed.root), f"--machine={bed.name}",
            "--register=no", "--keep-unit", "--boot", "--private-network",
            "--console=read-only", "--link-journal=no",
            # The project (and its venv) at the same path inside, read-only: through the
            # overlay alone it would be hidden when it lies under /tmp, which nspawn mounts
            # a fresh tmpfs over (a clean clone in CI may well be there).
            f"--bind-ro={PROJECT}"]
    with open(bed.workdir / "console.log", "wb") as log:
        nspawn = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    bed.nspawn = nspawn.pid
    bed.nspawn_start = _start_time(nspawn.pid)
    bed.save()
    return nspawn


def _wait_for_init(bed: _Bed, nspawn: subprocess.Popen[bytes], deadline: float) -> int:
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            raise BootError(f"systemd-nspawn exited {nspawn.returncode}:\n"
                            + (bed.workdir / "console.log").read_text(errors="replace"))
        init = _container_init(nspawn.pid)
        if init is not None:
            return init
        time.sleep(0.02)
    raise BootError("the container's systemd did not start")


def _poll_manager(ask: Callable[[float], subprocess.CompletedProcess[Any]], deadline: float,
                  pause: float, before: Callable[[], None] = lambda: None) -> tuple[bool, str]:
    """Ask a service manager `is-system-running --wait` (through `ask(seconds left)`) until it
    says running or degraded, or the deadline passes: (whether it is up, its last state)."""
    state = ""
    while time.monotonic() < deadline:
        before()
        try:
            done = ask(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            break
        state = str(done.stdout).strip()
        if state in ("running", "degraded"):
            return True, state
        time.sleep(pause)  # e.g. "offline": its bus is not there yet
    return False, state


def _wait_for_system(c: Container, deadline: float) -> str:
    def still_booting() -> None:
        if c.nspawn.poll() is not None:
            raise BootError(f"the container stopped while booting\n{c.debug_report()}")

    up, state = _poll_manager(
        lambda left: c.run(["systemctl", "is-system-running", "--wait"], check=False,
                           timeout=left),
        deadline, pause=0.05, before=still_booting)
    if up:
        return state
    raise BootError(f"the container did not boot (state {state!r})\n{c.debug_report()}")


@contextlib.contextmanager
def booted(user: str = "dsvcuser", *, linger: bool = True,
           mask: Sequence[str] = DEFAULT_MASK, timeout: float = 60) -> Iterator[Container]:
    """Boot a container, make `user` with a home (lingering, its manager up, unless not
    `linger`), yield the `Container`, and tear it all down afterwards, whatever happens.

    `mask`: units to mask inside before booting. `timeout`: for the boot and the user manager.
    Raises `BootError` if it does not boot, `TeardownError` if something could not be removed
    (unless the body raised: then that is noted on the body's exception)."""
    cleanup_stale()
    token = secrets.token_hex(4)
    bed = _Bed(name=f"distsvc-{token}", workdir=BASE / f"{PREFIX}{token}",
               cgroups=[root / f"{PREFIX}{token}" for root in cgroup_roots()])
    bed.workdir.mkdir(mode=0o700)
    nspawn = None
    with _sigterm_as_exit():
        try:
            deadline = time.monotonic() + timeout
            nspawn = _start(bed, mask)
            init = _wait_for_init(bed, nspawn, deadline)
            c = Container(name=bed.name, pid=init, workdir=bed.workdir, cgroups=bed.cgroups,
                          nspawn=nspawn, user=user)
            c.system_state = _wait_for_system(c, deadline)
            c.add_user(user, linger=linger, timeout=max(deadline - time.monotonic(), 1))
            yield c
        except BaseException as e:
            errors = _teardown(bed, nspawn)
            if errors and hasattr(e, "add_note"):
                e.add_note("tearing the container down: " + "; ".join(errors))
            raise
        errors = _teardown(bed, nspawn)
        if errors:
            raise TeardownError("; ".join(errors))


def container_fixture(user: str = "dsvcuser") -> Iterator[Container]:
    """The body of a pytest fixture: skips when `can_boot` gives a reason, else boots.

    In conftest.py::

        @pytest.fixture(scope="session")
        def systemd_container() -> Iterator[container.Container]:
            yield from container.container_fixture()
    """
    import pytest

    reason = can_boot()
    if reason:
        pytest.skip(reason)
    with booted(user) as c:
        yield c


# --- an SSH server inside, reachable from the host -------------------------------------------

SSH_ADDRESS = "127.0.0.9"
"""The host-side loopback address `start_sshd` forwards from by default (the sshd test bed of
tests/sshbed.py uses 127.0.0.2 and up)."""
SSH_PORT_INSIDE = 2222
"""The port sshd listens on inside (127.0.0.1 of the container's own network namespace): not
22, where the machine's own ssh.service listens when it is enabled and not masked."""
CLONE_NEWNET = 0x40000000


def _enter_net_namespace(pid: int) -> None:
    """Move the calling THREAD into the network namespace of `pid`.

    setns(2) acts on one thread, not the process: the sockets this thread creates from then on
    belong to that namespace, and a socket keeps its namespace whichever thread uses it. The
    other threads of the test run stay where they are."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into the network namespace of PID {pid}: "
                                 f"{os.strerror(errno)}")
    finally:
        os.close(fd)


class Forwarder:
    """A TCP forwarder living in the test process: it listens on `address`:`port` of the
    machine's own network namespace (port 0: a free one) and connects each connection it
    accepts to `target` in the network namespace of process `pid` (the container's PID 1).

    One thread accepts; it entered the container's namespace first (`_enter_net_namespace`),
    so the outgoing sockets it creates are there, while the listening socket, made before,
    stays on the machine's side. Two threads per connection pump the bytes, one each way, and
    pass an EOF on as shutdown(SHUT_WR), so a half-closed connection stays half-open; a reset
    or an error on either side ends both directions. A connection to a target that refuses is
    accepted, then closed at once (the client sees EOF, not "connection refused").
    `stop()` closes everything and joins every thread it started."""

    def __init__(self, pid: int, target: tuple[str, int], address: str = SSH_ADDRESS,
                 port: int = 0) -> None:
        self.target = target
        self._listener = socket.create_server((address, port))
        self.address, self.port = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._entered = threading.Event()
        self._error: OSError | None = None
        self._acceptor = threading.Thread(target=self._accept, args=(pid,), daemon=True,
                                          name=f"forwarder-{self.port}")
        self._acceptor.start()
        self._entered.wait()
        if self._error is not None:
            self.stop()
            raise self._error

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self, pid: int) -> None:
        try:
            _enter_net_namespace(pid)
        except OSError as e:
            self._error = e
            return
        finally:
            self._entered.set()
        while True:
            try:
                inbound, _ = self._listener.accept()
            except OSError:
                return  # stop() shut the listener down
            try:
                outbound = socket.create_connection(self.target, timeout=10)
                outbound.settimeout(None)
            except OSError:
                inbound.close()
                continue
            with self._lock:
                if self._stopping:
                    inbound.close()
                    outbound.close()
                    return
                self._sockets |= {inbound, outbound}
                self._threads = [t for t in self._threads if t.is_alive()]
                ended: list[socket.socket] = []
                for source, sink in ((inbound, outbound), (outbound, inbound)):
                    pump = threading.Thread(target=self._pump, args=(source, sink, ended),
                                            daemon=True, name=f"forwarder-{self.port}-pump")
                    pump.start()
                    self._threads.append(pump)

    def _pump(self, source: socket.socket, sink: socket.socket,
              ended: list[socket.socket]) -> None:
        """Copy `source` to `sink` until EOF, then pass the EOF on; the second of a
        connection's two pumps to end closes both sockets."""
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:  # a reset, or stop(): end the other direction too
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        with self._lock:
            ended.append(source)
            if len(ended) == 2:
                for s in (source, sink):
                    s.close()
                    self._sockets.discard(s)

    def connections(self) -> int:
        """How many connections are being forwarded now."""
        with self._lock:
            return len(self._sockets) // 2

    def stop(self) -> None:
        """Stop accepting, cut every connection, and join every thread (idempotent).
        Raises RuntimeError if a thread does not end within 10 s."""
        with self._lock:
            self._stopping = True
        # close() alone would leave the accept() blocked in the kernel; shutdown() wakes it.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(10)
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(10)
        stuck = [t.name for t in (self._acceptor, *threads) if t.is_alive()]
        if stuck:
            raise RuntimeError(f"forwarder threads did not end: {stuck}")


@dataclasses.dataclass
class SshHost:
    """An sshd inside a container, reached from the machine at `address`:`port`."""

    address: str
    port: int
    user: str
    """The container's user who may log in (the test user of `booted`)."""
    uid: int
    home: str
    host_key: str
    """Its public host key: ``ssh-ed25519 AAAA...``."""
    unit: str
    """The container's system unit running sshd (``distsvc-sshd-PORT.service``)."""
    port_inside: int
    container: Container
    forwarder: Forwarder
    known_hosts: Path
    """A known_hosts file on the host with `known_hosts_line` alone."""
    client_key: Path | None = None
    """The private key that logs in, when `start_sshd` was told (`booted_with_sshd` makes
    one)."""
    use_pam: bool = True
    started_in: float = 0.0
    """Seconds `start_sshd` took, until a banner came through the forwarder."""
    name: str = "sd"
    """A host name for a distsvc configuration."""

    @property
    def known_hosts_line(self) -> str:
        return f"[{self.address}]:{self.port} {self.host_key}"

    def ssh_argv(self, *remote: str, key: Path | None = None) -> list[str]:
        """An ``ssh`` command line logging in here with `key` (default `client_key`),
        checking the host key against `known_hosts`, never asking anything."""
        identity = key or self.client_key
        if identity is None:
            raise ValueError("no client key: pass key= or start_sshd(client_key=...)")
        return ["ssh", "-F", "/dev/null", "-i", str(identity), "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR",
                "-p", str(self.port), f"{self.user}@{self.address}", *remote]

    def ssh(self, command: str, *, timeout: float = 60, check: bool = True,
            key: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run `command` here through plain ``ssh`` (non-interactive, no terminal)."""
        done = subprocess.run(self.ssh_argv(command, key=key), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout)
        if check and done.returncode:
            raise CommandFailed(done.returncode, ["ssh", command], done.stdout, done.stderr)
        return done

    def stop(self) -> None:
        """Stop forwarding (every connection cut) and stop sshd inside, if the container
        still runs (the sessions' processes outside sshd's unit stay, as on a real host)."""
        self.forwarder.stop()
        if self.container.nspawn.poll() is None:
            self.container.run(["systemctl", "stop", self.unit], check=False)


def _wait_for_banner(address: str, port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), \
                socket.create_connection((address, port), timeout=2) as s:
            if s.recv(64).startswith(b"SSH-"):
                return True
        time.sleep(0.05)
    return False


def _authorize(c: Container, user: User, public_key: str) -> None:
    """Add `public_key` to the user's ~/.ssh/authorized_keys inside (made 0700/0600, owned by
    the user, as sshd's StrictModes wants), unless it is there already."""
    path = f"{user.home}/.ssh/authorized_keys"
    present = c.run(["cat", path], check=False).stdout if c.host_path(path).exists() else ""
    if public_key.strip() not in present.splitlines():
        c.write_file(path, present + public_key.strip() + "\n", owner=user.name, mode=0o600)
    c.run(["chmod", "0700", f"{user.home}/.ssh"])


def start_sshd(c: Container, authorized_key: str, *, client_key: Path | None = None,
               address: str = SSH_ADDRESS, port: int = 0, port_inside: int = SSH_PORT_INSIDE,
               user: str | None = None, use_pam: bool = True,
               timeout: float = 30) -> SshHost:
    """Run an OpenSSH server inside `c`, which `user` (default: the test user) logs in to with
    `authorized_key`, reachable from the machine at `address`:`port` (0: a free port).

    sshd is the machine's /usr/sbin/sshd, run as a system unit of the container
    (``distsvc-sshd-PORT_INSIDE.service``), listening on 127.0.0.1:`port_inside` of the
    container's own network namespace, with a host key generated inside and OpenSSH's
    defaults otherwise (MaxSessions 10, MaxStartups 10:30:100, StrictModes). With `use_pam`
    (the default) a login goes through PAM as on a real Debian host: pam_systemd registers
    a logind session (its processes in ``session-N.scope``) and sets XDG_RUNTIME_DIR and
    DBUS_SESSION_BUS_ADDRESS, even for a non-interactive ``ssh host CMD``. Without it a
    session gets neither (a host where distsvc must find /run/user/UID itself), its processes
    stay in sshd's unit, and the user's password field is set to ``*`` (sshd without PAM
    refuses a locked ``!`` account even with a key). Returns once a banner came through the
    forwarder; raises BootError (with sshd's journal) otherwise."""
    started = time.monotonic()
    u = c.users[user or c.user]
    unit = f"distsvc-sshd-{port_inside}.service"
    etc = f"/etc/distsvc-sshd-{port_inside}"
    c.run(["install", "-d", "-m", "0755", etc])
    c.run(["rm", "-f", f"{etc}/host_ed25519", f"{etc}/host_ed25519.pub"])
    c.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", f"{etc}/host_ed25519"])
    host_key = " ".join(c.read_file(f"{etc}/host_ed25519.pub").split()[:2])
    _authorize(c, u, authorized_key)
    if not use_pam:
        c.run(["usermod", "-p", "*", u.name])
    config = f"{etc}/sshd_config"
    c.write_file(config, f"""\
ListenAddress 127.0.0.1:{port_inside}
HostKey {etc}/host_ed25519
PidFile none
AllowUsers {u.name}
UsePAM {"yes" if use_pam else "no"}
PasswordAuthentication no
KbdInteractiveAuthentication no
PrintMotd no
UseDNS no
Subsystem sftp /usr/lib/openssh/sftp-server
""")
    # sshd's privilege separation directory (even `sshd -t` wants it); not the unit's
    # RuntimeDirectory=, which would be removed on stop from under the machine's own
    # ssh.service (or another of ours).
    c.run(["install", "-d", "-m", "0755", "/run/sshd"])
    c.run(["/usr/sbin/sshd", "-t", "-f", config])
    c.run(["systemd-run", f"--unit={unit}", "--description=distsvc test sshd",
           "/usr/sbin/sshd", "-D", "-e", "-f", config])
    forwarder = Forwarder(c.pid, ("127.0.0.1", port_inside), address, port)
    known_hosts = c.workdir / f"known_hosts-{forwarder.port}"
    host = SshHost(address=forwarder.address, port=forwarder.port, user=u.name, uid=u.uid,
                   home=u.home, host_key=host_key, unit=unit, port_inside=port_inside,
                   container=c, forwarder=forwarder, known_hosts=known_hosts,
                   client_key=client_key, use_pam=use_pam)
    known_hosts.write_text(host.known_hosts_line + "\n")
    if not _wait_for_banner(host.address, host.port, started + timeout):
        journal = c.run(["journalctl", "--no-pager", "-n", "30", "-u", unit], check=False)
        host.stop()
        raise BootError(f"sshd in the container did not answer through {host.address}:"
                        f"{host.port} within {timeout:g} s\n{journal.stdout}")
    host.started_in = time.monotonic() - started
    return host


@contextlib.contextmanager
def sshd(c: Container, authorized_key: str, **options: Any) -> Iterator[SshHost]:
    """`start_sshd` (same arguments) as a context manager: stopped afterwards."""
    host = start_sshd(c, authorized_key, **options)
    try:
        yield host
    finally:
        host.stop()


def client_keygen(path: Path) -> str:
    """Make an ed25519 key pair at `path` (and ``path.pub``) on the host; its public key."""
    for old in (path, path.with_name(path.name + ".pub")):
        old.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return path.with_name(path.name + ".pub").read_text().strip()


@contextlib.contextmanager
def booted_with_sshd(user: str = "dsvcuser", *, authorized_key: str | None = None,
                     address: str = SSH_ADDRESS, use_pam: bool = True,
                     mask: Sequence[str] = (*DEFAULT_MASK, "ssh.service"),
                     timeout: float = 60) -> Iterator[tuple[Container, SshHost]]:
    """`booted` with `sshd` in it: (container, host). Without `authorized_key` a client key
    pair is made in the bed's directory (``SshHost.client_key``). The machine's own
    ssh.service, enabled here, is masked by default: one sshd inside, ours."""
    with booted(user, mask=mask, timeout=timeout) as c:
        key = None
        if authorized_key is None:
            key = c.workdir / "client_ed25519"
            authorized_key = client_keygen(key)
        with sshd(c, authorized_key, client_key=key, address=address, use_pam=use_pam) as host:
            yield c, host


def sshd_fixture(user: str = "dsvcuser", **options: Any) -> Iterator[tuple[Container, SshHost]]:
    """The body of a module-scoped pytest fixture: a booted container with its sshd (see
    `booted_with_sshd`, which takes the same options). Fails (not skips: the suite allows no
    skipped tests) when `can_boot` gives a reason. In a test module::

        @pytest.fixture(scope="module")
        def sd() -> Iterator[tuple[container.Container, container.SshHost]]:
            yield from container.sshd_fixture()

    Beside the sshbed hosts, the bed's client key must be let in (``authorized_key=`` its
    ``.pub``, or one more `sshd` with it), and the client needs the host's
    ``known_hosts_line`` and its own ``user`` (``conftest.Client.configure(unknown=[...])``):
    see test_container_sshd.py's test_a_bed_users_daemon_places_a_job_there."""
    import pytest

    reason = can_boot()
    if reason:
        pytest.fail(reason)
    with booted_with_sshd(user, **options) as both:
        yield both
