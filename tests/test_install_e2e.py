"""distsvc installed as a user of pip or pipx installs it, and its units under real systemd.

The project (as git has it) is copied to a directory under /var/tmp and installed from there
with Debian's own /usr/bin/python3: `pip install .` into a fresh venv without the `systemd`
extra (no systemd-python, no pystemd), `pip install '.[systemd]'` into another, and `pipx
install .` (Debian 12's pipx) into a PIPX_HOME of its own. Each gives working commands. Then,
in the booted container (tests/container.py; it sees those venvs through its overlay, made
before it boots), the unprivileged test user runs each venv's `distsvc install-units --user`,
enables the socket, runs a command on the container's own sshd through the daemon that socket
started (the daemon's PID is the unit's main PID and its ExecStart is that venv's program; the
connection it keeps warm is the one the command used; its journal has the command's end), and
`install-units --remove` leaves no unit file or link behind. Without the extra the daemon still
notifies readiness and the watchdog (by hand), logs plain lines to the journal with one warning,
and a job is refused with one line naming the fix.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import container
from helpers import wait_for

PROJECT = Path(__file__).resolve().parents[1]
UNITS = ("distsvc.socket", "distsvc.service", "distsvc-scan.service", "distsvc-scan.timer")
PROGRAMS = ("distsvc", "distsvc-run", "distsvc-shell")


@dataclasses.dataclass
class Installs:
    base: Path
    plain: Path
    """bin/ of the venv with `pip install .`"""
    full: Path
    """bin/ of the venv with `pip install '.[systemd]'`"""
    pipx: Path
    """PIPX_BIN_DIR"""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the test venv's traces, so pip and pipx act as for a user."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env | extra


def sh(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=300, env=env or clean_env())
    assert done.returncode == 0, f"{cmd}: {done.stderr[-3000:]}"
    return done


def copy_project(target: Path) -> None:
    """The files git has or would have (no .venv, build/ or caches), symlinks kept."""
    names = subprocess.run(["git", "-C", str(PROJECT), "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], capture_output=True, check=True).stdout
    for name in filter(None, names.decode().split("\0")):
        source, dest = PROJECT / name, target / name
        if not os.path.lexists(source):
            continue  # deleted in the work tree
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            dest.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, dest)


def venv_install(venv: Path, spec: str) -> None:
    sh(["/usr/bin/python3", "-m", "venv", str(venv)])
    sh([str(venv / "bin" / "pip"), "install", "-q", spec])


@pytest.fixture(scope="module")
def installs() -> Iterator[Installs]:
    base = Path(tempfile.mkdtemp(prefix="distsvc-install-", dir="/var/tmp"))
    try:
        base.chmod(0o755)  # the container's test user runs these venvs
        source = base / "src"
        copy_project(source)
        # The three at once: most of their time is waiting for the index and building.
        pipx_env = clean_env(PIPX_HOME=str(base / "pipx"), PIPX_BIN_DIR=str(base / "pipx-bin"))
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            for done in [pool.submit(sh, ["pipx", "install", str(source)], pipx_env),
                         *(pool.submit(venv_install, base / name, spec) for name, spec in (
                             ("plain", str(source)), ("full", f"{source}[systemd]")))]:
                done.result()
        yield Installs(base, base / "plain" / "bin", base / "full" / "bin", base / "pipx-bin")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def check_programs(bin_dir: Path, home: Path) -> None:
    version = subprocess.run([str(PROJECT / ".venv/bin/python"), "-c",
                              "import distsvc; print(distsvc.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    for program in PROGRAMS:
        done = subprocess.run([str(bin_dir / program), "--version"], capture_output=True,
                              text=True, env=env, stdin=subprocess.DEVNULL, timeout=60)
        assert (done.returncode, done.stdout.strip()) == (0, f"distsvc {version}"), done
    done = subprocess.run([str(bin_dir / "distsvc-run"), "sh", "-c", "echo here; exit 3"],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                          timeout=60)
    assert (done.returncode, done.stdout) == (3, "here\n"), done
    assert "no hosts configured; running on this machine" in done.stderr


@pytest.mark.timeout(900)
def test_pip_and_pipx_installs_give_working_commands(installs: Installs, tmp_path: Path) -> None:
    for bin_dir in (installs.plain, installs.full, installs.pipx):
        check_programs(bin_dir, tmp_path)
    # The extra is what it says: the plain venv has neither library, the full one both.
    probe = "import importlib.util as u; print(bool(u.find_spec('systemd')), " \
            "bool(u.find_spec('pystemd')))"
    for bin_dir, expected in ((installs.plain, "False False"), (installs.full, "True True")):
        done = sh([str(bin_dir / "python"), "-I", "-c", probe])  # -I: not ./systemd/
        assert done.stdout.strip() == expected
    # The wheel carries the units of systemd/ themselves (files, not a link).
    site = sh([str(installs.plain / "python"), "-c",
               "import distsvc, os; print(os.path.dirname(distsvc.__file__))"]).stdout.strip()
    for unit in UNITS:
        packaged = Path(site, "units", unit)
        assert not packaged.is_symlink()
        assert packaged.read_text() == (PROJECT / "systemd" / unit).read_text()
    # pipx's programs are links into its own venv.
    assert os.path.realpath(installs.pipx / "distsvc").startswith(str(installs.base / "pipx"))


def test_install_units_dry_run_names_the_installation(installs: Installs,
                                                       tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([str(installs.pipx / "distsvc"), "install-units", "--dry-run"],
                          capture_output=True, text=True, env=env, check=True, timeout=60)
    assert f"ExecStart={installs.pipx / 'distsvc'} daemon\n" in done.stdout
    assert f"ExecStart={installs.pipx / 'distsvc'} scan\n" in done.stdout
    assert "Documentation=file:///usr/share" not in done.stdout
    assert "/METADATA" in done.stdout
    assert not (tmp_path / ".config").exists()


# -- under systemd ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd(installs: Installs) -> Iterator[tuple[container.Container, container.SshHost]]:
    yield from container.sshd_fixture()


def systemctl(c: container.Container, *args: str, check: bool = True) -> str:
    return str(c.run_as_user(["systemctl", "--user", *args], check=check).stdout).strip()


def configure_client(c: container.Container, host: container.SshHost) -> None:
    """The test user's key, known_hosts and configuration for the container's own sshd."""
    assert host.client_key is not None
    home = c.home
    c.write_file(f"{home}/.ssh/id_ed25519", host.client_key.read_bytes(), owner=c.user,
                 mode=0o600)
    c.write_file(f"{home}/.ssh/known_hosts",
                 f"[127.0.0.1]:{host.port_inside} {host.host_key}\n", owner=c.user, mode=0o600)
    c.write_file(f"{home}/.config/distsvc/config.toml",
                 f'[[hosts]]\nname = "sd"\naddress = "127.0.0.1"\nport = {host.port_inside}\n',
                 owner=c.user)


def leftovers(c: container.Container) -> str:
    """What is in the user's unit directory (files and links), one per line."""
    return str(c.run_as_user(["find", f"{c.home}/.config/systemd", "-mindepth", "1",
                              "!", "-type", "d"], check=False).stdout).strip()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("which", ["plain", "full"])
def test_install_units_runs_the_daemon_of_that_installation(
        installs: Installs, sd: tuple[container.Container, container.SshHost],
        which: str) -> None:
    c, host = sd
    configure_client(c, host)
    bin_dir = getattr(installs, which)
    program = str(bin_dir / "distsvc")
    done = c.run_as_user([program, "install-units", "--user"])
    assert "reloaded your user manager" in done.stdout, done.stdout
    assert "systemctl --user enable --now distsvc.socket distsvc-scan.timer" in done.stdout
    for unit in UNITS:
        assert c.read_file(f"{c.home}/.config/systemd/user/{unit}").startswith(
            "# Written by `distsvc install-units`")
    verify = c.run_as_user(["systemd-analyze", "--user", "verify",
                            *(f"{c.home}/.config/systemd/user/{u}" for u in UNITS)], check=False)
    assert verify.returncode == 0, verify.stderr
    systemctl(c, "daemon-reload")
    systemctl(c, "enable", "--now", "distsvc.socket")
    assert systemctl(c, "show", "-p", "FragmentPath", "--value", "distsvc.service") == \
        f"{c.home}/.config/systemd/user/distsvc.service"
    assert systemctl(c, "is-active", "distsvc.service", check=False) == "inactive"

    result = c.run_as_user([str(bin_dir / "distsvc-run"), "sh", "-c",
                            "echo on $SSH_CONNECTION; echo err >&2; exit 3"], check=False)
    assert (result.returncode, result.stderr) == (3, "err\n"), result
    assert result.stdout.startswith("on 127.0.0.1 ") and result.stdout.endswith(
        f" {host.port_inside}\n"), result.stdout
    # The socket started the daemon, and it is this installation's program.
    assert systemctl(c, "is-active", "distsvc.service") == "active"
    pid = int(systemctl(c, "show", "-p", "MainPID", "--value", "distsvc.service"))
    cmdline = c.read_file(f"/proc/{pid}/cmdline").split("\0")
    assert program in cmdline and "daemon" in cmdline, cmdline
    status = json.loads(c.run_as_user([str(bin_dir / "distsvc"), "status", "--json"]).stdout)
    assert status["pid"] == pid and status["connections"] == 1  # the command's warm connection
    # Ready and watchdog were notified (by hand without systemd-python).
    assert systemctl(c, "show", "-p", "WatchdogUSec", "--value", "distsvc.service") == "30s"
    assert "serving" in systemctl(c, "show", "-p", "StatusText", "--value", "distsvc.service")
    entries = c.wait_for_journal("distsvc.service", "job ended")
    ended = [e for e in entries if "job ended" in str(e.get("MESSAGE")) and e.get("_PID")
             == str(pid)]
    assert ended, entries
    if which == "full":
        # Entries with fields, through systemd-python.
        started = [e for e in entries if e.get("MESSAGE") == "job started"]
        assert ended[-1]["STATUS"] == "3" and started[-1]["HOST"] == "sd"
        jobs = c.run_as_user([str(bin_dir / "distsvc"), "job", "list"], check=False)
        assert jobs.returncode == 0, jobs
    else:
        assert "status=3" in ended[-1]["MESSAGE"], ended[-1]
        warned = [e for e in entries if "systemd-python is not installed" in
                  str(e.get("MESSAGE")) and e.get("_PID") == str(pid)]
        assert len(warned) == 1, entries
        job = c.run_as_user([str(bin_dir / "distsvc"), "job", "start", "--local", "true"],
                            check=False)
        assert job.returncode == 255 and job.stdout == "", job
        assert len(job.stderr.splitlines()) == 1, job.stderr
        assert "pip install 'distsvc[systemd]'" in job.stderr, job.stderr
        assert systemctl(c, "is-active", "distsvc.service") == "active"  # it serves on

    done = c.run_as_user([program, "install-units", "--remove"])
    assert "stopped and disabled them first" in done.stdout, done.stdout
    assert leftovers(c) == ""
    assert systemctl(c, "is-active", "distsvc.socket", check=False) == "inactive"
    assert systemctl(c, "show", "-p", "LoadState", "--value", "distsvc.service") == "not-found"
    wait_for(lambda: not c.host_path(f"/proc/{pid}").exists(), timeout=30,
             what="the daemon to stop")
    assert c.failed_units(c.user) == []


def test_install_units_leaves_units_it_did_not_write(
        installs: Installs, sd: tuple[container.Container, container.SshHost]) -> None:
    c, _ = sd
    path = f"{c.home}/.config/systemd/user/distsvc.service"
    c.write_file(path, "[Service]\nExecStart=/bin/true\n", owner=c.user)
    try:
        done = c.run_as_user([str(installs.plain / "distsvc"), "install-units"], check=False)
        assert done.returncode == 2 and done.stdout == "", done
        assert done.stderr == (f"distsvc: {path} exists and was not written by distsvc "
                               "install-units: left as it is (--force replaces it)\n")
        assert leftovers(c) == path
        done = c.run_as_user([str(installs.plain / "distsvc"), "install-units", "--remove"])
        assert f"left {path}: not written by distsvc install-units" in done.stdout
        assert c.read_file(path) == "[Service]\nExecStart=/bin/true\n"
        c.run_as_user([str(installs.plain / "distsvc"), "install-units", "--force"])
        c.run_as_user([str(installs.plain / "distsvc"), "install-units", "--remove"])
        assert leftovers(c) == ""
    finally:
        c.run(["rm", "-f", path])


def test_install_units_system_wide_for_every_user(
        installs: Installs, sd: tuple[container.Container, container.SshHost]) -> None:
    c, _ = sd
    program = str(installs.plain / "distsvc")
    refused = c.run_as_user([program, "install-units", "--system-wide"], check=False)
    assert refused.returncode == 1 and refused.stdout == "", refused
    assert refused.stderr.startswith("distsvc: cannot change /etc/systemd/user")
    assert refused.stderr.endswith("Permission denied (--system-wide needs root)\n")
    done = c.run([program, "install-units", "--system-wide"])
    assert "each user, to use them: systemctl --user daemon-reload" in done.stdout, done.stdout
    c.run(["systemctl", "--global", "enable", "distsvc.socket"])
    systemctl(c, "daemon-reload")
    # Found through /etc/xdg/systemd/user, Debian's link to /etc/systemd/user.
    fragment = systemctl(c, "show", "-p", "FragmentPath", "--value", "distsvc.service")
    assert c.run(["readlink", "-f", fragment]).stdout.strip() == \
        "/etc/systemd/user/distsvc.service"
    assert "ExecStart=" + program in c.read_file("/etc/systemd/user/distsvc.service")
    done = c.run([program, "install-units", "--system-wide", "--remove"])
    assert "and 1 enablement link" in done.stdout, done.stdout
    assert c.run(["find", "/etc/systemd/user", "-name", "distsvc*"]).stdout == ""
    systemctl(c, "daemon-reload")
    assert systemctl(c, "show", "-p", "LoadState", "--value", "distsvc.service") == "not-found"
