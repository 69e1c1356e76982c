"""A throwaway QEMU virtual machine with a pure cgroup v2 kernel, where resource limits are
enforced, for tests that must see MemoryMax=, TasksMax= and CPUQuota= take effect.

This machine runs cgroups in hybrid mode (cpu, memory and pids are v1 controllers), so in the
nspawn container (tests/container.py) limits are only recorded. Its /dev/kvm cannot run Debian
kernels, so QEMU emulates (TCG: ``-accel tcg,thread=multi -cpu max -smp 2 -m 1024``, never
KVM). `booted()` does this:

1. `kernel()` makes sure that Debian's current ``linux-image-*-amd64`` (the one the
   ``linux-image-amd64`` package depends on) is unpacked in `CACHE` (``apt-get download``,
   ``dpkg -x``, ``depmod``), with a small busybox initramfs next to it: both survive between
   runs and are rebuilt only when missing or stale (a newer kernel package, or other init
   script, modules or busybox: see `Kernel.stamp`). A download that fails while a kernel is
   cached uses the cached one. Under a lock: test runs may share the cache;
2. writes the bed's directory, /var/tmp/distsvc-vmbed-XXXXXXXX/, whose ``overlay/`` holds the
   files the VM sees on top of the host's: /etc/passwd, group and shadow with the test user,
   its home, lingering for it (/var/lib/systemd/linger/USER), an sshd of the bed's own
   (``vmbed-sshd.service``: its own host key, port 22, the bed's client key authorized for
   root and the user), masks for units that only slow the boot down or are in the way (see
   `MASK`: udev among them, the init set up the devices), an empty fstab, a volatile journal,
   no emptying of /tmp, root's shell /bin/sh (the host's /root/.bashrc, which the VM sees,
   may take seconds), and /lib/modules/VERSION pointing into the cache;
3. boots QEMU with the kernel and ``systemd.unified_cgroup_hierarchy=1``. Its init (see
   `INIT`) loads the virtio, 9p and overlay modules and mounts the root: an overlay whose lower
   layers are the bed's ``overlay/`` and the host's ``/``, both shared read-only over
   virtio-9p (``version=9p2000.L,cache=loose,access=client``), and whose upper layer is a
   tmpfs inside the VM. Every installed package and this project's venv and source are
   visible in the VM at the same paths; nothing written inside reaches the host. The network
   is QEMU's user mode with ``restrict=on`` (no packet leaves it) and one port forward,
   127.0.0.1:PORT on the host to the VM's sshd;
4. waits until root can log in over ssh, then the test user, then the user's manager answers
   (``systemctl --user is-system-running --wait``). Each login is one ssh ControlMaster
   connection that every later command of that login reuses;
5. afterwards, even when the body raised or the run was interrupted (Ctrl-C; SIGTERM, which
   `booted` turns into KeyboardInterrupt while the VM is up unless SIGTERM is handled
   already): the ssh processes are ended, QEMU is killed (nothing inside needs saving: the
   VM's writes are in its memory) and the bed's directory removed.

A test run killed outright (SIGKILL) cannot tear down, but QEMU and every ssh get a
parent-death signal (SIGKILL) and die with it; the directory they leave is removed by
`cleanup_stale()`, which `booted()` calls first, and only for beds whose owning process (PID
and start time in WORKDIR/bed.json) is gone. A parent-death signal follows the THREAD that
started the process: boot from a thread that lives as long as the VM (pytest's main thread).

Commands run over ssh as root (`VM.run`, `VM.popen`) or as the test user (`VM.run_as_user`,
`VM.popen_as_user`) through ``env -i -C DIR``: the user's get HOME, USER, LOGNAME, SHELL,
XDG_RUNTIME_DIR=/run/user/UID, DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/UID/bus and a PATH
that starts with this project's venv bin directory (``python3`` is the venv's; ``distsvc``
and ``pystemd`` import). A login over ssh is a real PAM session: its commands run in a
session scope of the user's slice, not in a unit of the user's manager;
``systemd-run --user`` is how they put something under the user's manager.

Gotchas:

- ssh cannot signal a remote command: each command is started by a shell that first writes
  its PID to /tmp/vmbed-TOKEN.pid inside, and `VMProcess.send_signal` (so ``terminate`` and
  ``kill``) sends the signal there with ``kill`` as root. A command ended by a signal gives
  returncode 255 (ssh's), not ``-N``; its stdout and stderr close when it ends.
- A command that times out in `VM.run` is killed inside as well as its ssh.
- The VM runs the host's /etc (hostname, machine ID, installed units): changes made to the
  host during a test may or may not show through (9p with cache=loose); write what the test
  needs through the VM instead.
- Everything is emulated, and the 2 host cores are shared: a command over the reused
  connection costs about 0.3 s, a venv python importing distsvc about 2 s, the boot 20-30 s
  to ssh and 30-50 s to the user's manager, twice that while another VM runs (see
  docs/benchmarks.md, "VM bed"). Keep the number of commands small, and the tests that use
  the VM at a generous pytest timeout (the first one pays for the boot).
- QEMU's resident memory is about 0.6 GiB (guest memory touched plus a 256 MiB TCG
  translation cache; QEMU's default of 1 GiB made it 1.2 GiB, no faster).

Wrapping this in a pytest fixture (in conftest.py)::

    import vmbed

    @pytest.fixture(scope="session")
    def vm() -> Iterator[vmbed.VM]:
        yield from vmbed.vm_fixture()
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import container
import sshbed

CACHE = Path("/var/cache/distsvc-vmbed")
"""The unpacked kernels and their initramfs (survives between runs)."""
KERNEL_PACKAGE = "linux-image-amd64"
"""Debian's meta package: the kernel package it depends on is the one booted."""
BASE = Path("/var/tmp")
"""Where the beds' directories go (the VM sees them through its 9p share of /)."""
PREFIX = "distsvc-vmbed-"
QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")
MODULES = ("virtio_pci", "virtio_net", "9pnet_virtio", "9p", "overlay")
"""What the init loads (with their dependencies) before it can mount the root."""
MEMORY_MIB = 1024
CPUS = 2
BOOT_TIMEOUT = 180.0
"""For the boot up to the user's manager: 30-70 s on this shared 2-core machine. The test that
first takes the `vm` fixture pays for the boot: give the tests that use it a pytest timeout
of 300 s or more (``pytestmark = pytest.mark.timeout(300)``)."""
PATH = container.PATH
"""The commands' PATH: this project's venv bin directory first (the VM sees the same path)."""
VENV_BIN = container.VENV_BIN
PDEATHSIG = container.PDEATHSIG
MASK = (
    *container.DEFAULT_MASK,
    "ssh.service", "sshd.service",  # the host's sshd, with the host's keys: ours replaces it
    "getty@tty1.service", "serial-getty@ttyS0.service",  # no one logs in on a console
    "systemd-timesyncd.service", "systemd-pstore.service", "e2scrub_reap.service",
    "systemd-networkd.service", "networking.service",  # the init configured eth0 for good
    # Boot-time chores with nothing to do here (the host's /etc is set up; the fstab empty),
    # each a second or two of emulated CPU while the boot competes for it.
    "systemd-sysusers.service", "systemd-remount-fs.service", "systemd-binfmt.service",
    "systemd-update-utmp.service", "systemd-update-utmp-runlevel.service",
    "systemd-modules-load.service", "kmod-static-nodes.service", "modprobe@drm.service",
    "modprobe@dm_mod.service", "modprobe@loop.service", "modprobe@fuse.service",
    "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    # No udev: the init set up the devices the VM needs, and its coldplug costs the most.
    "systemd-udevd.service", "systemd-udev-trigger.service", "systemd-udev-settle.service",
    "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
)
"""Units masked inside: enabled on the machine, useless or in the way in the VM."""

INIT = r"""#!/bin/busybox sh
# The VM bed's init (written by tests/vmbed.py): modules, the overlay root, then systemd.
/bin/busybox mkdir -p /proc /sys /dev /host /bed /rw /newroot
/bin/busybox --install -s /bin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
fail() { echo "vmbed init: $*"; poweroff -f; }
for m in @MODULES@; do insmod "/modules/$m.ko" || fail "insmod $m"; done
share=trans=virtio,version=9p2000.L,cache=loose,access=client,msize=512000,ro
mount -t 9p -o "$share" host /host || fail "cannot mount the host's / over 9p"
mount -t 9p -o "$share" bed /bed || fail "cannot mount the bed's overlay over 9p"
mount -t tmpfs -o mode=0755 rw /rw && mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/bed:/host,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || fail "cannot mount the overlay root"
rm -f /newroot/.dockerenv /newroot/run/.containerenv  # else systemd thinks it runs in one
ip link set lo up && ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 \
    && ip route add default via 10.0.2.2 || fail "cannot configure eth0"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /lib/systemd/systemd
"""
"""The initramfs's /init (busybox sh). eth0 is configured here for good: nothing in the VM
runs DHCP, and ``net.ifnames=0`` keeps udev from renaming it."""

SSHD_CONFIG = """\
Port 22
HostKey /etc/ssh/vmbed/ssh_host_ed25519_key
AuthorizedKeysFile /etc/ssh/vmbed/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM yes
PrintMotd no
# Not a host distsvc is tested against: the bed's own control channel, one ControlMaster
# connection per login, every command a session on it (distsvc's hosts keep the default 10).
MaxSessions 200
MaxStartups 100
"""
SSHD_UNIT = """\
[Unit]
Description=sshd of the distsvc VM bed (tests/vmbed.py)
# As early as the journal is there: the network was configured by the init, and a login
# made before logind runs works all the same (pam_systemd is optional).
DefaultDependencies=no
After=systemd-journald.socket
[Service]
RuntimeDirectory=sshd
ExecStart=/usr/sbin/sshd -D -e -f /etc/ssh/vmbed/sshd_config
[Install]
WantedBy=sysinit.target
"""


class BootError(RuntimeError):
    """The VM did not boot, or its test user's manager did not come up."""


class TeardownError(RuntimeError):
    """Something of the VM could not be removed (its message says what)."""


CommandFailed = container.CommandFailed


# --- what the machine can do ---------------------------------------------------------------


def can_boot() -> str | None:
    """The reason this machine cannot boot the VM bed, or None if it can."""
    if sys.platform != "linux":
        return "the VM bed needs Linux"
    if os.geteuid() != 0:
        return "the VM bed needs root (its kernel cache, files owned by the VM's users)"
    for tool, package in ((QEMU, "qemu-system-x86"), (str(BUSYBOX), "busybox-static"),
                          ("ssh", "openssh-client"), ("ssh-keygen", "openssh-client"),
                          ("/usr/sbin/sshd", "openssh-server"), ("depmod", "kmod"),
                          ("setpriv", "util-linux"), ("apt-get", "apt"), ("dpkg", "dpkg")):
        if not shutil.which(tool):
            return f"{tool} is not installed (apt-get install {package})"
    return None


# --- the kernel and its initramfs ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kernel:
    """An unpacked Debian kernel package in `CACHE`, with the initramfs built for it."""

    directory: Path
    """CACHE/PACKAGE_VERSION: boot/, lib/modules/VERSION/ (depmod run), initrd.img."""
    release: str
    """The kernel release (``uname -r`` inside): 6.1.0-57-amd64."""

    @property
    def vmlinuz(self) -> Path:
        return self.directory / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules(self) -> Path:
        return self.directory / "lib" / "modules" / self.release

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    def stamp(self) -> str:
        """What the initramfs is made of: it is rebuilt when this changes."""
        digest = hashlib.sha256(INIT.encode())
        digest.update(" ".join(MODULES).encode())
        digest.update(BUSYBOX.read_bytes())
        return digest.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _apt(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _wanted_package() -> tuple[str, str] | None:
    """The kernel package (name, version) that ``linux-image-amd64`` depends on, from the apt
    lists (no network), or None when apt does not know it."""
    try:
        depends = _apt("apt-cache", "depends", "--important", KERNEL_PACKAGE)
        name = next(line.split(":", 1)[1].strip() for line in depends.splitlines()
                    if line.strip().startswith("Depends: linux-image-"))
        shown = _apt("apt-cache", "show", "--no-all-versions", name)
        version = next(line.split(":", 1)[1].strip() for line in shown.splitlines()
                       if line.startswith("Version:"))
    except (subprocess.CalledProcessError, StopIteration):
        return None
    return name, version


def _unpack(name: str, version: str, directory: Path) -> None:
    """Download the kernel package and unpack it into `directory` (made whole or not at all)."""
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        subprocess.run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root",
                        f"{name}={version}"], cwd=partial, check=True, capture_output=True)
        (deb,) = partial.glob("*.deb")
        subprocess.run(["dpkg", "-x", str(deb), str(partial)], check=True, capture_output=True)
        deb.unlink()
        (release,) = (p.name for p in (partial / "lib" / "modules").iterdir())
        subprocess.run(["depmod", "-b", str(partial), release], check=True, capture_output=True)
        partial.rename(directory)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _with_dependencies(modules: Path, names: Sequence[str]) -> list[Path]:
    """The module files of `names` and everything they need, each after what it needs."""
    deps = {}
    for line in (modules / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        deps[Path(module).name.removesuffix(".ko")] = (module, needs.split())
    ordered: list[Path] = []

    def add(name: str) -> None:
        module, needs = deps[name]
        for need in needs:
            add(Path(need).name.removesuffix(".ko"))
        if modules / module not in ordered:
            ordered.append(modules / module)

    for name in names:
        add(name)
    return ordered


def _build_initramfs(kernel: Kernel) -> None:
    """busybox, /init and the modules `INIT` loads, as an uncompressed newc cpio archive."""
    files = _with_dependencies(kernel.modules, MODULES)
    with tempfile.TemporaryDirectory(dir=kernel.directory) as tree:
        root = Path(tree)
        (root / "bin").mkdir()
        (root / "modules").mkdir()
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        for f in files:
            shutil.copy2(f, root / "modules" / f.name)
        names = " ".join(f.name.removesuffix(".ko") for f in files)
        (root / "init").write_text(INIT.replace("@MODULES@", names))
        (root / "init").chmod(0o755)
        listing = subprocess.run(["find", ".", "-mindepth", "1"], cwd=root, check=True,
                                 capture_output=True).stdout
        partial = kernel.initrd.with_suffix(".partial")
        with open(partial, "wb") as out:
            subprocess.run([str(BUSYBOX), "cpio", "-o", "-H", "newc"], cwd=root, input=listing,
                           stdout=out, stderr=subprocess.DEVNULL, check=True)
        partial.replace(kernel.initrd)
    (kernel.directory / "initrd.stamp").write_text(kernel.stamp())


def kernel() -> Kernel:
    """The kernel to boot, unpacked in `CACHE`, with an up-to-date initramfs: downloaded and
    built when missing or stale (other kernels are removed then), else reused as it is."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with _locked(CACHE / "lock"):
        wanted = _wanted_package()
        if wanted is None:  # no apt lists yet (a fresh machine): fetch them once
            with contextlib.suppress(subprocess.CalledProcessError):
                _apt("apt-get", "update", "-q")
            wanted = _wanted_package()
        chosen, problem = None, f"apt knows no package that {KERNEL_PACKAGE} depends on"
        if wanted is not None:
            name, version = wanted
            directory = CACHE / f"{name}_{version.replace(':', '%3a')}"
            try:
                if not directory.is_dir():
                    _unpack(name, version, directory)
                chosen = directory
            except subprocess.CalledProcessError as e:
                problem = (f"cannot fetch {name} {version}: {shlex.join(e.cmd)}: "
                           f"{(e.stderr or b'').decode(errors='replace').strip()}")
        cached = sorted((d for d in CACHE.glob("linux-image-*")
                         if d.is_dir() and not d.name.endswith(".partial")),
                        key=lambda d: d.stat().st_mtime)
        if chosen is None and not cached:
            raise BootError(f"no kernel for the VM bed: {problem}")
        chosen = chosen or cached[-1]  # the newest we have while apt cannot give the wanted one
        for stale in cached:
            if stale != chosen:
                shutil.rmtree(stale, ignore_errors=True)
        (release,) = (p.name for p in (chosen / "lib" / "modules").iterdir())
        k = Kernel(chosen, release)
        stamp = chosen / "initrd.stamp"
        if not k.initrd.exists() or not stamp.exists() or stamp.read_text() != k.stamp():
            _build_initramfs(k)
        return k


# --- processes -----------------------------------------------------------------------------


def _stop_process(proc: subprocess.Popen[Any] | None, pid: int | None, start: int | None,
                  errors: list[str], what: str, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace`: by Popen when we have it (and reap), else by the
    PID recorded with its start time (a stale bed's: never a reused PID)."""
    if proc is not None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    errors.append(f"{what} (PID {proc.pid}) would not die")
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not container._alive(pid, start):
            return
        assert pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while container._alive(pid, start) and time.monotonic() < deadline:
            time.sleep(0.05)
    if container._alive(pid, start):
        errors.append(f"{what} (PID {pid}) would not die")


class VMProcess(subprocess.Popen[Any]):
    """A command started in the VM over ssh; signals sent to it (``send_signal``,
    ``terminate``, ``kill``) reach the command inside, which ssh alone cannot do."""

    def __init__(self, vm: VM, token: str, argv: list[str], **kwargs: Any) -> None:
        self.vm = vm
        self.token = token
        super().__init__(argv, **kwargs)

    def pid_inside(self, timeout: float = 10.0) -> int | None:
        """The command's PID inside the VM (once its shell wrote it), None once it is gone."""
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            done = self.vm.run(["cat", f"/tmp/vmbed-{self.token}.pid"], check=False)
            if done.returncode == 0 and done.stdout.strip():
                return int(done.stdout)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)
        return None

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        pid = self.pid_inside()
        if pid is None:
            super().send_signal(sig)  # not started inside: ending ssh is all there is to do
            return
        self.vm.run(["kill", f"-{int(sig)}", str(pid)], check=False)


# --- the VM --------------------------------------------------------------------------------


User = container.User


@dataclasses.dataclass
class VM:
    """A booted VM. Paths called ``path`` or ``home`` are paths inside it."""

    workdir: Path
    """The bed's directory on the host (bed.json, console.log, keys, overlay/)."""
    port: int
    """The host's port (on 127.0.0.1) forwarded to the VM's sshd."""
    qemu: subprocess.Popen[bytes]
    kernel: Kernel
    users: dict[str, User]
    user: str
    """The test user made by `booted`."""
    masters: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)
    """The ssh ControlMaster of each login (root, the test user)."""
    started: list[VMProcess] = dataclasses.field(default_factory=list)
    manager_state: str = ""
    """What the test user's ``systemctl --user is-system-running --wait`` said once booted:
    ``running`` or ``degraded``."""
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    """Seconds from starting QEMU to: ``ssh`` (root logged in), ``manager`` (the user's
    manager answering)."""

    @property
    def uid(self) -> int:
        return self.users[self.user].uid

    @property
    def gid(self) -> int:
        return self.users[self.user].gid

    @property
    def home(self) -> str:
        return self.users[self.user].home

    @property
    def console_log(self) -> Path:
        """What the kernel, the init and systemd printed on the serial console."""
        return self.workdir / "console.log"

    def runtime_dir(self, user: str | None = None) -> str:
        """XDG_RUNTIME_DIR of `user` (default: the test user), inside."""
        return f"/run/user/{self.users[user or self.user].uid}"

    def user_env(self, user: str | None = None) -> dict[str, str]:
        """The environment commands of `user` (default: the test user) get."""
        u = self.users[user or self.user]
        runtime = self.runtime_dir(u.name)
        return {"PATH": PATH, "HOME": u.home, "USER": u.name, "LOGNAME": u.name,
                "SHELL": "/bin/bash", "LANG": "C.UTF-8", "XDG_RUNTIME_DIR": runtime,
                "DBUS_SESSION_BUS_ADDRESS": f"unix:path={runtime}/bus"}

    # ssh

    def ssh_options(self, login: str) -> list[str]:
        """ssh's options for `login` (root or a user): the bed's key and known_hosts, the
        login's control socket, nothing from ~/.ssh/config."""
        return ["-F", "/dev/null", "-i", str(self.workdir / "id_ed25519"), "-p", str(self.port),
                "-l", login, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.workdir / 'known_hosts'}",
                "-o", "HostKeyAlias=vmbed", "-o", f"ControlPath={self.workdir}/ctl-{login}",
                "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=6"]

    def _argv(self, login: str, cmd: Sequence[str], env: Mapping[str, str],
              cwd: str) -> tuple[str, list[str]]:
        """The ssh command line running `cmd` as `login` in `cwd` with exactly `env`, behind a
        shell that writes its PID to /tmp/vmbed-TOKEN.pid before it becomes `cmd`."""
        token = secrets.token_hex(8)
        script = f'echo $$ >/tmp/vmbed-{token}.pid && exec "$@"'
        remote = ["sh", "-c", script, "sh", "env", "-i", "-C", cwd,
                  *(f"{k}={v}" for k, v in env.items()), *map(str, cmd)]
        return token, [*PDEATHSIG, "ssh", *self.ssh_options(login), "-T", "127.0.0.1",
                       shlex.join(remote)]

    def _root(self, env: Mapping[str, str] | None) -> dict[str, str]:
        return {"PATH": PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root",
                "LANG": "C.UTF-8", **(env or {})}

    def _communicate(self, login: str, cmd: Sequence[str], env: Mapping[str, str], cwd: str, *,
                     check: bool, timeout: float,
                     input: str | bytes | None) -> subprocess.CompletedProcess[Any]:
        token, argv = self._argv(login, cmd, env, cwd)
        text = not isinstance(input, bytes)
        with VMProcess(self, token, argv, stdin=subprocess.PIPE if input is not None
                       else subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=text) as proc:
            try:
                out, err = proc.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()  # inside too
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.communicate(timeout=10)
                subprocess.Popen.kill(proc)
                proc.communicate()
                raise
        done = subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)
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
        return self._communicate("root", cmd, self._root(env), cwd or "/", check=check,
                                 timeout=timeout, input=input)

    def run_as_user(self, cmd: Sequence[str], *, user: str | None = None, check: bool = True,
                    timeout: float = 60, input: str | bytes | None = None,
                    env: Mapping[str, str] | None = None,
                    cwd: str | None = None) -> subprocess.CompletedProcess[Any]:
        """Like `run`, as `user` (default: the test user) in its home, with its environment
        (`user_env`) plus `env`."""
        u = self.users[user or self.user]
        return self._communicate(u.name, cmd, {**self.user_env(u.name), **(env or {})},
                                 cwd or u.home, check=check, timeout=timeout, input=input)

    def _popen(self, login: str, cmd: Sequence[str], env: Mapping[str, str], cwd: str,
               **kwargs: Any) -> VMProcess:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        token, argv = self._argv(login, cmd, env, cwd)
        proc = VMProcess(self, token, argv, **kwargs)
        self.started.append(proc)
        return proc

    def popen(self, cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: str | None = None, **kwargs: Any) -> VMProcess:
        """Start `cmd` as root inside and return at once (Popen keyword arguments allowed)."""
        return self._popen("root", cmd, self._root(env), cwd or "/", **kwargs)

    def popen_as_user(self, cmd: Sequence[str], *, user: str | None = None,
                      env: Mapping[str, str] | None = None, cwd: str | None = None,
                      **kwargs: Any) -> VMProcess:
        """Start a long-running `cmd` as `user` (default: the test user); signals sent to the
        returned process reach `cmd` itself. Whatever is left runs until the VM stops."""
        u = self.users[user or self.user]
        return self._popen(u.name, cmd, {**self.user_env(u.name), **(env or {})},
                           cwd or u.home, **kwargs)

    # systemd

    def wait_for_user_manager(self, user: str | None = None, timeout: float = 30) -> str:
        """Wait until the user manager of a lingering `user` has finished starting up;
        returns its state (``running`` or ``degraded``)."""
        up, state = container._poll_manager(
            lambda left: self.run_as_user(["systemctl", "--user", "is-system-running", "--wait"],
                                          user=user, check=False, timeout=left),
            time.monotonic() + timeout, pause=0.2)
        if up:
            return state
        raise BootError(f"the user manager of {user or self.user} did not come up "
                        f"(state {state!r})\n{self.debug_report()}")

    def failed_units(self, user: str | None = None) -> list[str]:
        """The failed units of the system manager, or of `user`'s manager."""
        cmd = ["systemctl", "--failed", "--plain", "--no-legend", "--no-pager"]
        if user is None:
            done = self.run(cmd, check=False)
        else:
            done = self.run_as_user([cmd[0], "--user", *cmd[1:]], user=user, check=False)
        return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]

    def debug_report(self) -> str:
        """QEMU's state, the system's and the test user's manager's state and failed units,
        and the end of the console log: what to print when something inside misbehaves."""
        lines = [f"qemu: {'running' if self.qemu.poll() is None else self.qemu.returncode}"]
        if self.qemu.poll() is None and "root" in self.masters:
            with contextlib.suppress(Exception):
                state = self.run(["systemctl", "is-system-running"], check=False, timeout=20)
                lines.append(f"system: {state.stdout.strip()}; failed: {self.failed_units()}")
        lines.append(_console_tail(self.workdir))
        return "\n".join(lines)


def _console_tail(workdir: Path, count: int = 40) -> str:
    try:
        log = (workdir / "console.log").read_text(errors="replace").splitlines()[-count:]
    except OSError:
        return "--- no console log"
    return "\n".join(["--- console (end)", *log])


# --- booting and tearing down --------------------------------------------------------------


@dataclasses.dataclass
class _Bed:
    """What `booted` started on the host, recorded in WORKDIR/bed.json for `cleanup_stale`."""

    workdir: Path
    owner: int = dataclasses.field(default_factory=os.getpid)
    owner_start: int | None = dataclasses.field(
        default_factory=lambda: container._start_time(os.getpid()))
    processes: list[tuple[str, int, int | None]] = dataclasses.field(default_factory=list)
    """(what, PID, start time) of QEMU and the ssh masters."""
    popens: dict[str, subprocess.Popen[Any]] = dataclasses.field(default_factory=dict)
    """The same as Popen objects, in the process that started them (to reap them)."""

    def add(self, what: str, proc: subprocess.Popen[Any]) -> None:
        self.processes.append((what, proc.pid, container._start_time(proc.pid)))
        self.popens[what] = proc
        self.save()

    def save(self) -> None:
        record = {"workdir": str(self.workdir), "owner": self.owner,
                  "owner_start": self.owner_start, "processes": self.processes}
        tmp = self.workdir / "bed.json.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(self.workdir / "bed.json")

    @classmethod
    def load(cls, workdir: Path) -> _Bed:
        record = json.loads((workdir / "bed.json").read_text())
        bed = cls(Path(record["workdir"]), record["owner"], record["owner_start"],
                  [(str(w), int(p), s) for w, p, s in record["processes"]])
        if bed.workdir != workdir or not workdir.name.startswith(PREFIX):
            raise ValueError(f"{workdir}/bed.json describes another directory")
        return bed


def _teardown(bed: _Bed) -> list[str]:
    """Stop what `bed` started (ssh first, then QEMU) and remove its directory; returns what
    went wrong (empty when all went)."""
    errors: list[str] = []
    for what, pid, start in sorted(bed.processes, key=lambda p: p[0] == "qemu"):
        try:
            _stop_process(bed.popens.get(what), pid, start, errors, what,
                          grace=2.0 if what == "qemu" else 5.0)
        except Exception as e:  # go on with the others whatever happens
            errors.append(f"stopping {what}: {type(e).__name__}: {e}")
    shutil.rmtree(bed.workdir, onerror=lambda _f, p, e: errors.append(f"rm {p}: {e[1]}"))
    return errors


def cleanup_stale() -> list[str]:
    """Tear down the beds left by test runs that died without tearing down (their owner
    process is gone); returns their directories. Beds of live processes are left alone."""
    cleaned = []
    for workdir in sorted(BASE.glob(PREFIX + "*")):
        try:
            bed = _Bed.load(workdir)
        except (OSError, ValueError, TypeError, KeyError):
            continue  # not one of ours, or being made right now
        if container._alive(bed.owner, bed.owner_start):
            continue
        _teardown(bed)
        cleaned.append(str(workdir))
    return cleaned


def leftovers(vm: VM) -> list[str]:
    """What is left on the host of a VM that was torn down (empty when nothing): QEMU, the ssh
    masters, commands started in it, the bed's directory."""
    found = [f"{what} (PID {p.pid}) is running"
             for what, p in [("qemu", vm.qemu), *vm.masters.items(),
                             *(("command", p) for p in vm.started)]
             if p.poll() is None]
    if vm.workdir.exists():
        found.append(f"directory: {vm.workdir}")
    return found


def _free_uid() -> int:
    """A UID and GID unused on the host (whose /etc the VM sees), from 2000 up."""
    taken = {int(line.split(":")[2]) for f in ("/etc/passwd", "/etc/group")
             for line in Path(f).read_text().splitlines() if line.count(":") >= 2}
    return next(i for i in range(2000, 60000) if i not in taken)


def _with_shell(entry: str, shell: str) -> str:
    return ":".join([*entry.split(":")[:6], shell])


def _write(path: Path, text: str, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    os.chown(path, *owner)


def _make_overlay(workdir: Path, k: Kernel, user: User, client_key: str) -> str:
    """The files the VM sees over the host's (WORKDIR/overlay); returns the VM's sshd host key
    line for known_hosts."""
    top = workdir / "overlay"
    top.mkdir(mode=0o755)
    etc = top / "etc"
    for name, line in (("passwd", f"{user.name}:x:{user.uid}:{user.gid}::{user.home}:/bin/bash"),
                       ("group", f"{user.name}:x:{user.gid}:"),
                       ("shadow", f"{user.name}:*:20000:0:99999:7:::")):
        lines = [entry for entry in Path("/etc", name).read_text().splitlines()
                 if not entry.startswith(f"{user.name}:")]
        if name == "passwd":  # root's shell reads none of the host's /root/.bashrc and such
            lines = [_with_shell(entry, "/bin/sh") if entry.startswith("root:") else entry
                     for entry in lines]
        _write(etc / name, "\n".join([*lines, line]) + "\n",
               mode=0o640 if name == "shadow" else 0o644)
    if (shadow := Path("/etc/shadow")).exists():
        os.chown(etc / "shadow", 0, shadow.stat().st_gid)
    home = top / user.home.lstrip("/")
    home.mkdir(parents=True, mode=0o755)
    home.chmod(0o700)
    os.chown(home, user.uid, user.gid)
    _write(top / "var/lib/systemd/linger" / user.name, "")
    sshd = etc / "ssh/vmbed"
    sshd.mkdir(parents=True, mode=0o755)
    host_key = sshbed.keygen(sshd / "ssh_host_ed25519_key")
    _write(sshd / "sshd_config", SSHD_CONFIG)
    _write(sshd / "authorized_keys", client_key + "\n")
    units = etc / "systemd/system"
    _write(units / "vmbed-sshd.service", SSHD_UNIT)
    (units / "sysinit.target.wants").mkdir(parents=True, exist_ok=True)
    (units / "sysinit.target.wants/vmbed-sshd.service").symlink_to(
        "/etc/systemd/system/vmbed-sshd.service")
    for unit in MASK:
        (units / unit).symlink_to("/dev/null")
    _write(etc / "fstab", "# the VM bed's root is set up by its init (tests/vmbed.py)\n")
    _write(etc / "systemd/journald.conf.d/vmbed.conf", "[Journal]\nStorage=volatile\n")
    # No emptying of /tmp at boot: through 9p it takes a minute, and it would hide this
    # project when it lies there (a clean clone in CI may well).
    _write(etc / "tmpfiles.d/tmp.conf", "")
    modules = top / Path("/lib/modules").resolve().relative_to("/")
    modules.mkdir(parents=True)
    (modules / k.release).symlink_to(k.modules)
    return host_key


def _qemu_argv(workdir: Path, k: Kernel, port: int) -> list[str]:
    share = "local,security_model=none,readonly=on,multidevs=remap"
    cmdline = ("console=ttyS0 panic=-1 quiet mitigations=off net.ifnames=0 "
               "systemd.unified_cgroup_hierarchy=1 systemd.show_status=false")
    return [*PDEATHSIG, QEMU, "-name", workdir.name,
            "-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max", "-smp", str(CPUS),
            "-m", str(MEMORY_MIB), "-nodefaults", "-display", "none", "-no-reboot",
            "-kernel", str(k.vmlinuz), "-initrd", str(k.initrd), "-append", cmdline,
            "-serial", f"file:{workdir / 'console.log'}",
            "-fsdev", f"{share},id=host,path=/",
            "-device", "virtio-9p-pci,fsdev=host,mount_tag=host",
            "-fsdev", f"{share},id=bed,path={workdir / 'overlay'}",
            "-device", "virtio-9p-pci,fsdev=bed,mount_tag=bed",
            "-netdev", f"user,id=net,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", "virtio-net-pci,netdev=net", "-device", "virtio-rng-pci"]


def _listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds the TCP socket listening on 127.0.0.1:`port`."""
    wanted = f"0100007F:{port:04X}"
    inodes = {fields[9] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
              if (fields := line.split())[1] == wanted and fields[3] == "0A"}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").removeprefix("socket:[")[:-1] in inodes:
                return True
    return False


def _start_qemu(bed: _Bed, k: Kernel, attempts: int = 3) -> tuple[subprocess.Popen[bytes], int]:
    """Start QEMU with its port forward on a free port; another port when someone took that
    one between our look and QEMU's bind (QEMU then exits at once)."""
    attempt = 1
    while True:
        port = sshbed.free_port("127.0.0.1")
        with open(bed.workdir / "qemu.log", "wb") as log:
            qemu = subprocess.Popen(_qemu_argv(bed.workdir, k, port),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        bed.add("qemu", qemu)
        deadline = time.monotonic() + 30
        while qemu.poll() is None and not _listens(qemu.pid, port) and time.monotonic() < deadline:
            time.sleep(0.05)
        if qemu.poll() is None:
            return qemu, port
        why = (bed.workdir / "qemu.log").read_text(errors="replace").strip()
        if "host forwarding" not in why or attempt == attempts:
            raise BootError(f"QEMU exited {qemu.returncode} at once: {why}")
        bed.processes = [p for p in bed.processes if p[1] != qemu.pid]
        bed.save()
        attempt += 1


def _start_master(vm: VM, bed: _Bed, login: str, deadline: float) -> None:
    """Log `login` in with a ControlMaster connection, trying again until sshd answers."""
    control = vm.workdir / f"ctl-{login}"
    while True:
        if vm.qemu.poll() is not None:
            qemu_log = (vm.workdir / "qemu.log").read_text(errors="replace").strip()
            raise BootError(f"QEMU exited {vm.qemu.returncode} while booting: {qemu_log}\n"
                            f"{_console_tail(vm.workdir)}")
        with open(vm.workdir / f"ssh-{login}.log", "wb") as log:
            master = subprocess.Popen(
                [*PDEATHSIG, "ssh", *vm.ssh_options(login), "-o", "ControlMaster=yes",
                 "-o", "ConnectTimeout=10", "-N", "127.0.0.1"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        while master.poll() is None and not control.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if control.exists():
            vm.masters[login] = master
            bed.add(f"ssh-{login}", master)
            return
        master.kill()
        master.wait()
        if time.monotonic() > deadline:
            log_text = (vm.workdir / f"ssh-{login}.log").read_text(errors="replace").strip()
            raise BootError(f"ssh as {login} did not get in: {log_text}\n{vm.debug_report()}")
        time.sleep(0.5)


@contextlib.contextmanager
def booted(user: str = "dsvcvm", *, timeout: float = BOOT_TIMEOUT) -> Iterator[VM]:
    """Boot the VM, make `user` (lingering, its manager up), yield the `VM`, and tear it all
    down afterwards, whatever happens.

    `timeout`: for the boot and the user manager. Raises `BootError` if it does not boot,
    `TeardownError` if something could not be removed (unless the body raised: then that is
    noted on the body's exception)."""
    cleanup_stale()
    k = kernel()
    bed = _Bed(Path(tempfile.mkdtemp(prefix=PREFIX, dir=BASE)))
    bed.save()
    vm: VM | None = None

    def down() -> list[str]:
        for proc in vm.started if vm else ():  # ssh clients: they would end with the masters
            if proc.poll() is None:
                subprocess.Popen.kill(proc)
                proc.wait()
        return _teardown(bed)

    with container._sigterm_as_exit():
        try:
            uid = _free_uid()
            u = User(user, uid, uid, f"/home/{user}")
            client_key = sshbed.keygen(bed.workdir / "id_ed25519")
            host_key = _make_overlay(bed.workdir, k, u, client_key)
            (bed.workdir / "known_hosts").write_text(f"vmbed {host_key}\n")
            started = time.monotonic()
            deadline = started + timeout
            qemu, port = _start_qemu(bed, k)
            vm = VM(bed.workdir, port, qemu, k, {user: u}, user)
            _start_master(vm, bed, "root", deadline)
            vm.timings["ssh"] = time.monotonic() - started
            _start_master(vm, bed, user, deadline)
            vm.manager_state = vm.wait_for_user_manager(
                timeout=max(deadline - time.monotonic(), 1))
            vm.timings["manager"] = time.monotonic() - started
            yield vm
        except BaseException as e:
            errors = down()
            if errors and hasattr(e, "add_note"):
                e.add_note("tearing the VM down: " + "; ".join(errors))
            raise
        errors = down()
        if errors:
            raise TeardownError("; ".join(errors))


def vm_fixture(user: str = "dsvcvm") -> Iterator[VM]:
    """The body of a pytest fixture: fails when `can_boot` gives a reason (no test is
    skipped: what it needs is installed by scripts/setup.sh --test), else boots.

    In conftest.py::

        @pytest.fixture(scope="session")
        def vm() -> Iterator[vmbed.VM]:
            yield from vmbed.vm_fixture()
    """
    import pytest

    reason = can_boot()
    if reason:
        pytest.fail(f"the VM bed cannot boot here: {reason}")
    with booted(user) as vm:
        yield vm
