"""The Debian package, built from this checkout, installed with apt into a booted Debian 12
container (tests/container.py: systemd as PID 1, a lingering test user, the container's own
sshd as the SSH host) and used there as a user would, then purged.

The container's network is private, so everything the package needs that the machine lacks
is fetched BEFORE it boots: ``apt-get install --download-only -o Dir::Cache::archives=DIR
distsvc.deb`` on the machine. apt resolves the .deb's dependencies against the machine's own
installed set, which is exactly the container's (the machine's root is the overlay's lower
layer), so DIR ends up holding Debian 12's python3-paramiko, -structlog, -systemd, -pystemd
and whatever of their dependencies (python3-bcrypt, -nacl, -cryptography...) the machine does
not have, at the versions Debian ships, resolved by apt itself rather than by a dependency
closure of our own (``apt-get download`` of each name would fetch what is installed already
and miss nothing only if we walked Depends/Pre-Depends/alternatives ourselves). Inside, root
installs the .deb and those archives, named as files, with ``apt-get install``: offline (a
missing dependency would fail: there is no network to fetch it from).

Those four libraries must NOT be installed on the machine (scripts/setup.sh does not install
them; the venv has its own from PyPI): if they were, the container would have them already and
the test would not show that Debian's own packages are what the package gets. The fixture
fails, saying so, when one is.

As the user, PATH is Debian's default (no venv: `container.PATH` starts with it), so every
command is the package's /usr/bin one running on /usr/bin/python3 and
/usr/lib/python3/dist-packages.

The tests of this module run in order on one container: each goes on from the state the one
before left (units enabled, a job run...), and the last purges the package.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import container
from test_packaging import build_deb

pytestmark = pytest.mark.timeout(900)

DEBIAN_LIBRARIES = ("python3-paramiko", "python3-structlog", "python3-systemd",
                    "python3-pystemd")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_PATH = "/usr/local/bin:/usr/bin:/bin"
"""Debian's default PATH for a user (login.defs' ENV_PATH without /usr/games)."""
ROOT_ENV = {"PATH": SYSTEM_PATH, "DEBIAN_FRONTEND": "noninteractive"}
USER_ENV = {"PATH": USER_PATH}
UNITS = ("distsvc.socket", "distsvc-scan.timer")
DIST_PACKAGES = "/usr/lib/python3/dist-packages/"


@dataclasses.dataclass
class Installed:
    """The booted container with the package installed, and what the tests learn on the way."""

    c: container.Container
    host: container.SshHost
    versions: dict[str, str]
    """Package -> version, from dpkg inside, of the four Debian libraries."""
    downloaded: list[str]
    """The archives fetched before booting (what the machine lacked)."""
    job: str = ""
    """The ID of the job `test_a_job_is_started_and_followed_to_its_end` ran."""

    def user(self, *argv: str, check: bool = True, timeout: float = 60,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`argv` as the test user, with Debian's default PATH (no venv)."""
        return self.c.run_as_user(list(argv), check=check, timeout=timeout,
                                  env={**USER_ENV, **(env or {})})

    def root(self, *argv: str, check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.c.run(list(argv), check=check, timeout=timeout, env=ROOT_ENV)

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.user("systemctl", "--user", *args, check=check).stdout.strip()

    def report(self) -> str:
        """The libraries' versions, for assertion messages."""
        return "Debian's libraries in the container: " + ", ".join(
            f"{p} {v}" for p, v in sorted(self.versions.items()))


def dpkg_versions(run: Any, packages: tuple[str, ...]) -> dict[str, str]:
    """Package -> version of those of `packages` dpkg says are installed (through `run`,
    here or inside)."""
    done = run(["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Status}\n",
                *packages], check=False)
    fields = (line.split() for line in done.stdout.splitlines())
    return {f[0]: f[1] for f in fields if len(f) == 3 and f[2] == "installed"}


def prepare_archives(deb: Path, archives: Path, recommends: bool = False) -> list[str]:
    """Download into `archives` every package `deb` needs (with `recommends`, what it
    recommends too) that this machine (and so the container) does not have; the archives'
    names. One `apt-get update` and a second try
    when the first fails (no package lists yet, or stale ones naming archives gone from the
    mirror)."""
    partial = archives / "partial"
    partial.mkdir(parents=True)
    archives.chmod(0o755)
    shutil.chown(partial, user="_apt")  # apt downloads as _apt, sandboxed
    argv = ["apt-get", "install", "-y", "-q", "--download-only",
            *([] if recommends else ["--no-install-recommends"]),
            "-o", f"Dir::Cache::archives={archives}", str(deb)]

    def apt(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              env={**ROOT_ENV, "LC_ALL": "C.UTF-8"}, timeout=600)

    done = apt(argv)
    if done.returncode:
        apt(["apt-get", "update", "-q"])
        done = apt(argv)
    assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return sorted(p.name for p in archives.glob("*.deb"))


def set_up_user(c: container.Container, host: container.SshHost) -> None:
    """The user's SSH key, known_hosts and distsvc configuration naming the container's sshd
    (127.0.0.1:2222 of its own network) as host ``sd``: what a user writes by hand."""
    assert host.client_key is not None
    home, user = c.home, c.user
    c.write_file(f"{home}/.ssh/id_ed25519", host.client_key.read_bytes(), owner=user,
                 mode=0o600)
    c.write_file(f"{home}/.ssh/known_hosts",
                 f"[127.0.0.1]:{host.port_inside} {host.host_key}\n", owner=user, mode=0o600)
    c.write_file(f"{home}/.config/distsvc/config.toml",
                 f'[[hosts]]\nname = "sd"\naddress = "127.0.0.1"\nport = {host.port_inside}\n',
                 owner=user)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    reason = container.can_boot()
    if reason:
        pytest.fail(reason)
    on_machine = dpkg_versions(lambda argv, check: subprocess.run(
        argv, check=check, capture_output=True, text=True), DEBIAN_LIBRARIES)
    assert not on_machine, (
        f"installed on this machine: {on_machine}; the test must show that the package "
        f"installs Debian's own in the container: apt-get purge them here")
    deb = build_deb(tmp_path_factory.mktemp("deb"))
    # Under /var/tmp: the container sees the machine's root through its overlay, but /tmp is
    # a tmpfs of its own there. Made before booting: the overlay does not promise to show
    # files written in its lower layer afterwards.
    work = Path(tempfile.mkdtemp(prefix="distsvc-deb-e2e-", dir="/var/tmp"))
    try:
        work.chmod(0o755)
        local = work / deb.name
        shutil.copyfile(deb, local)
        archives = work / "archives"
        downloaded = prepare_archives(local, archives)
        with container.booted_with_sshd() as (c, host):
            missing = [p for p in DEBIAN_LIBRARIES if not any(
                name.startswith(f"{p}_") for name in downloaded)]
            assert not missing, f"apt fetched no {missing} (installed in the container?)"
            # Every archive named as a file, so apt has nothing to fetch (the network is
            # loopback only). Not --no-download: apt 2.6 then fails on a local .deb
            # ("Internal Error, Pathname to install is not absolute"). The libraries are
            # marked automatically installed after, as a plain install of the .deb leaves them.
            # And the pre-filled directory as apt's cache: a library that is also in the
            # package lists at the same version may be taken from the list's source, which
            # apt then finds already downloaded there instead of fetching it.
            done = c.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                          "-o", f"Dir::Cache::archives={archives}", str(local),
                          *(str(archives / name) for name in downloaded)],
                         env=ROOT_ENV, check=False, timeout=600)
            assert done.returncode == 0, f"apt-get install:\n{done.stdout}\n{done.stderr}"
            assert "http" not in done.stdout, f"apt fetched something:\n{done.stdout}"
            c.run(["apt-mark", "auto", *(name.split("_")[0] for name in downloaded)],
                  env=ROOT_ENV)
            versions = dpkg_versions(c.run, ("distsvc", *DEBIAN_LIBRARIES))
            print("installed in the container:", versions, "from", downloaded)
            set_up_user(c, host)
            yield Installed(c, host, versions, downloaded)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_the_package_installs_offline_with_debians_libraries(installed: Installed) -> None:
    versions = installed.versions
    assert set(versions) == {"distsvc", *DEBIAN_LIBRARIES}, installed.report()
    # Debian 12's, whatever their point release: the bounds README.Debian states.
    assert versions["python3-paramiko"].startswith("2.12."), installed.report()
    for program in ("distsvc", "distsvc-run", "distsvc-shell"):
        found = installed.user("sh", "-c", f"command -v {program}").stdout.strip()
        assert found == f"/usr/bin/{program}", found
    imported = installed.user("/usr/bin/python3", "-c", "import distsvc, paramiko, structlog, "
                              "systemd.journal, pystemd; print(distsvc.__file__, "
                              "paramiko.__file__, structlog.__file__, systemd.__file__, "
                              "pystemd.__file__, paramiko.__version__)").stdout.split()
    assert all(path.startswith(DIST_PACKAGES) for path in imported[:-1]), imported
    assert imported[-1] == versions["python3-paramiko"].split("-")[0], installed.report()


def test_the_units_enable_and_a_command_runs_through_the_socket_started_daemon(
        installed: Installed) -> None:
    installed.systemctl("enable", "--now", *UNITS)
    for unit in UNITS:
        assert installed.systemctl("is-active", unit) == "active", unit
    assert installed.systemctl("is-active", "distsvc.service", check=False) == "inactive"
    ran = installed.user("distsvc-run", "sh", "-c",
                         'echo "on $SSH_CONNECTION"; echo err >&2; exit 3', check=False)
    assert (ran.returncode, ran.stderr) == (3, "err\n"), (ran, installed.report())
    # sshd's session on the container's loopback port 2222 ran it: the host's, not a local run.
    assert ran.stdout.startswith("on 127.0.0.1 ") and ran.stdout.endswith(
        f" 127.0.0.1 {installed.host.port_inside}\n"), ran.stdout
    # The socket started the daemon, the package's program on Debian's python3, and it
    # carried the command: its journal entry comes from the unit's main process.
    pid = installed.systemctl("show", "-p", "MainPID", "--value", "distsvc.service")
    assert int(pid) > 0, installed.report()
    cmdline = installed.c.read_file(f"/proc/{pid}/cmdline").split("\0")
    assert cmdline[:3] == ["/usr/bin/python3", "/usr/bin/distsvc", "daemon"], cmdline
    entries = installed.c.wait_for_journal("distsvc.service", "job ended")
    started = [e for e in entries if e.get("MESSAGE") == "job started"]
    assert started and started[-1]["HOST"] == "sd" and started[-1]["_PID"] == pid, started
    maps = installed.c.read_file(f"/proc/{pid}/maps")
    assert f"{DIST_PACKAGES}systemd/" in maps, "the daemon did not load Debian's python3-systemd"


def test_status_answers_from_the_daemon(installed: Installed) -> None:
    plain = installed.user("distsvc", "status")
    assert "sd" in plain.stdout, plain.stdout
    status = json.loads(installed.user("distsvc", "status", "--json").stdout)
    assert status["running"] and status["connections"] >= 1, (status, installed.report())


def test_the_journal_shows_the_command_with_its_fields(installed: Installed) -> None:
    out = installed.user("journalctl", "--user", "-u", "distsvc", "--no-pager", "-o",
                         "json").stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    started = [e for e in entries if e.get("MESSAGE") == "job started"]
    assert started, [e.get("MESSAGE") for e in entries]
    entry = started[-1]
    assert entry["HOST"] == "sd" and entry["SYSLOG_IDENTIFIER"] == "distsvc", entry
    assert entry["ARGV"].startswith("sh -c echo"), entry
    assert entry["_SYSTEMD_USER_UNIT"] == "distsvc.service", entry
    ended = [e for e in entries if e.get("MESSAGE") == "job ended"]
    assert ended and ended[-1]["STATUS"] == "3" and ended[-1]["JOB"] == entry["JOB"], ended


def test_a_job_is_started_and_followed_to_its_end(installed: Installed) -> None:
    started = installed.user("distsvc", "job", "start", "--json", "--", "sh", "-c",
                             "echo job begins; sleep 2; echo job done; echo to err >&2")
    record = json.loads(started.stdout)["job"]
    installed.job = str(record["id"])
    logs = installed.user("distsvc", "job", "logs", "--follow", installed.job, timeout=120)
    assert (logs.stdout, logs.stderr) == ("job begins\njob done\n", "to err\n"), logs
    status = json.loads(installed.user("distsvc", "job", "status", "--json",
                                       installed.job).stdout)["job"]
    assert (status["state"], status["exit_code"], status["placement"].get("host")) == (
        "exited", 0, "sd"), (status, installed.report())


def test_man_distsvc_run(installed: Installed) -> None:
    page = installed.user("man", "distsvc-run", check=False,
                          env={"MANPAGER": "cat", "MANWIDTH": "80"})
    assert page.returncode == 0, page.stderr
    assert "NAME" in page.stdout and "distsvc-run" in page.stdout, page.stdout


COMPLETE = r"""
. /usr/share/bash-completion/bash_completion
__load_completion distsvc || exit 1  # found by name, as bash-completion finds it on a Tab
spec=$(complete -p distsvc) || exit 1
function=$(printf '%s\n' "$spec" | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
COMP_LINE=$1
COMP_POINT=${#COMP_LINE}
read -r -a COMP_WORDS <<<"$COMP_LINE"
[ "${COMP_LINE% }" = "$COMP_LINE" ] || COMP_WORDS+=("")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
"$function" distsvc "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""
"""Bash's completion of the command line $1 as TAB would ask for it, one candidate a line."""


def test_bash_completes_a_subcommand_and_a_job_id(installed: Installed) -> None:
    def complete(line: str) -> list[str]:
        done = installed.user("bash", "-c", COMPLETE, "complete", line, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert "job" in complete("distsvc jo")
    assert installed.job and installed.job in complete("distsvc job logs "), installed.job


SNAPSHOT = r"""
import hashlib, json, os, sys
found = {}
for top in sys.argv[1:]:
    for where, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(where, name)
            found[path] = (hashlib.sha256(open(path, "rb").read()).hexdigest()
                           if os.path.isfile(path) and not os.path.islink(path) else "dir")
print(json.dumps(found))
"""
"""Each path under the given directories -> its content's hash (or "dir")."""

LEFT = r"""
import json, os, subprocess, sys
left = []
for path in json.load(sys.stdin):
    if path in ("/", "/.") or not os.path.lexists(path):
        continue
    if os.path.isdir(path) and not os.path.islink(path) and subprocess.run(
            ["dpkg", "-S", path], capture_output=True).returncode == 0:
        continue  # a directory another package has files in
    left.append(path)
print(json.dumps(left))
"""
"""Those of the given paths that are still there, but for directories of other packages."""


def test_disable_and_purge_leave_nothing_of_the_package_and_the_users_own_files(
        installed: Installed) -> None:
    c = installed.c
    installed.systemctl("disable", "--now", *UNITS, "distsvc.service")
    for unit in (*UNITS, "distsvc.service"):
        assert installed.systemctl("is-active", unit, check=False) == "inactive", unit
    own = [f"{c.home}/.config/distsvc", f"{c.home}/.local/state/distsvc"]
    before = json.loads(installed.user("/usr/bin/python3", "-c", SNAPSHOT, *own).stdout)
    assert f"{own[0]}/config.toml" in before and any(p.startswith(own[1]) for p in before), \
        before
    files = installed.root("dpkg", "-L", "distsvc").stdout.split("\n")
    assert "/usr/bin/distsvc-run" in files and "/usr/lib/systemd/user/distsvc.socket" in files
    done = installed.root("apt-get", "purge", "-y", "-q", "distsvc", timeout=300, check=False)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert not dpkg_versions(installed.root, ("distsvc",))
    left = json.loads(c.run(["/usr/bin/python3", "-c", LEFT], env=ROOT_ENV,
                            input=json.dumps([f for f in files if f])).stdout)
    assert not left, f"left by the purge: {left}"
    links = installed.root("find", "/etc/systemd/user", f"{c.home}/.config/systemd/user",
                           "/var/lib/systemd/deb-systemd-user-helper-enabled", "-name",
                           "distsvc*", check=False).stdout.split()
    assert not links, links
    assert installed.user("sh", "-c", "command -v distsvc-run", check=False).returncode != 0
    after = json.loads(installed.user("/usr/bin/python3", "-c", SNAPSHOT, *own).stdout)
    assert after == before, "the purge changed the user's own config or state"
