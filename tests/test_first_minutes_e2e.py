"""A new user's first five minutes, from the README alone, in a fresh booted container.

The README's quick start is executed as a user types it: its install block (the Debian
package, built from this checkout and installed with apt, as root) and then its quick-start
block, verbatim, as the container's unprivileged user with Debian's default PATH. Nothing of
the project's venv is used inside.

What the README takes for granted is prepared first, as a real user's machine has it:
- "hosts you can already `ssh` to": the user's key, `~/.ssh/config` naming `build1` and
  `build2` (both the container's own sshd on its loopback port 2222, OpenSSH's defaults) and
  their host key in `~/.ssh/known_hosts`;
- the network apt would fetch distsvc's dependencies from: the container has none, so the
  archives apt needs are downloaded on the machine before the container boots and put into the
  container's apt cache (/var/cache/apt/archives), where `apt install` finds them without
  fetching (tests/test_deb_e2e.py explains the download); the build tools, which
  build-deb.sh installs when missing, are installed on the machine first by the same script.

Then the test checks what the user should have seen: both hosts up in `distsvc hosts`, the
command's output from a host, the job's output, its status, and that the socket-started
daemon carried the command.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import container
from test_deb_e2e import DEBIAN_LIBRARIES, ROOT_ENV, USER_ENV, dpkg_versions, prepare_archives
from test_packaging import build_deb

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[1]
HOSTS = ("build1", "build2")


def readme_block(marker: str) -> str:
    """The shell code between `<!-- marker -->` and `<!-- /marker -->` in the README."""
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {marker} -->\n```sh\n(.*?)```\n<!-- /{marker} -->", text, re.S)
    assert found, f"README.md has no ```sh block marked {marker}"
    return found.group(1)


def prepare_user_ssh(c: container.Container, host: container.SshHost) -> None:
    """What "hosts you can already ssh to" means: a key, aliases, known host keys."""
    assert host.client_key is not None
    home, user = c.home, c.user
    c.write_file(f"{home}/.ssh/id_ed25519", host.client_key.read_bytes(), owner=user,
                 mode=0o600)
    aliases = " ".join(HOSTS)
    c.write_file(f"{home}/.ssh/config",
                 f"Host {aliases}\n  HostName 127.0.0.1\n  Port {host.port_inside}\n",
                 owner=user, mode=0o600)
    c.write_file(f"{home}/.ssh/known_hosts",
                 f"[127.0.0.1]:{host.port_inside} {host.host_key}\n", owner=user, mode=0o600)


def copy_checkout(where: Path) -> None:
    """The checkout as a user has it (the files git tracks or would track, as build-deb.sh
    takes them), where the container can write: the project itself is read-only there."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file() or source.is_symlink():
            target = where / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)


@pytest.fixture(scope="module")
def fresh() -> Iterator[tuple[container.Container, Path]]:
    reason = container.can_boot()
    if reason:
        pytest.fail(reason)
    on_machine = dpkg_versions(lambda argv, check: subprocess.run(
        argv, check=check, capture_output=True, text=True), DEBIAN_LIBRARIES)
    assert not on_machine, f"installed on this machine: {on_machine} (see test_deb_e2e.py)"
    work = Path(tempfile.mkdtemp(prefix="distsvc-first-minutes-", dir="/var/tmp"))
    try:
        work.chmod(0o755)
        # Build tools on the machine (build-deb.sh installs them), and the archives the
        # package needs: both before booting, which the container then sees.
        deb = build_deb(work / "deb")
        archives = work / "archives"
        # With what it recommends: the README's `apt install` takes those too (python3-invoke
        # for paramiko, ...), and the container cannot fetch them.
        downloaded = prepare_archives(deb, archives, recommends=True)
        copy_checkout(work / "distsvc")
        with container.booted_with_sshd() as (c, host):
            c.run(["cp", *(str(archives / name) for name in downloaded),
                   "/var/cache/apt/archives/"], env=ROOT_ENV)
            prepare_user_ssh(c, host)
            yield c, work / "distsvc"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_the_readme_quick_start_works_as_typed(fresh: tuple[container.Container, Path]
                                               ) -> None:
    c, checkout = fresh
    script = f"cd {checkout}\n{readme_block('install-deb')}"
    # apt asks "Do you want to continue? [Y/n]": the user says yes.
    install = c.run(["bash", "-euo", "pipefail", "-c", script], env=ROOT_ENV, check=False,
                    timeout=900, input="y\n")
    assert install.returncode == 0, f"{install.stdout[-3000:]}\n{install.stderr[-3000:]}"
    fetched = re.findall(r"^Get:\d+ https?:.*$", install.stdout, re.M)
    assert not fetched, f"apt fetched from the network: {fetched}"
    versions = dpkg_versions(c.run, ("distsvc", *DEBIAN_LIBRARIES))
    assert set(versions) == {"distsvc", *DEBIAN_LIBRARIES}, versions

    quick = c.run_as_user(["bash", "-eo", "pipefail", "-c",
                           f"cd\n{readme_block('quickstart')}"],
                          env=USER_ENV, check=False, timeout=300)
    said = f"stdout:\n{quick.stdout}\nstderr:\n{quick.stderr}"
    assert quick.returncode == 0, said
    out = quick.stdout.splitlines()
    # `distsvc hosts`: both hosts, measured and up.
    rows: dict[str, str] = {}
    for fields in (line.split() for line in out):
        if len(fields) > 2 and fields[0] in HOSTS:
            rows.setdefault(fields[0], fields[1])
    assert rows == dict.fromkeys(HOSTS, "up"), said
    # `distsvc-run uname -n`: a host's name (the container has the machine's).
    nodename = c.run(["uname", "-n"]).stdout.strip()
    assert nodename in out, said
    # The job: its ID printed, its output followed, its status.
    assert f"hello from {nodename}" in out, said
    assert re.search(r"exited 0", quick.stdout), said
    # The daemon the socket started carried the command (not an in-process fallback).
    active = c.run_as_user(["systemctl", "--user", "is-active", "distsvc.service"],
                           env=USER_ENV, check=False).stdout.strip()
    assert active == "active", said
    entries = c.wait_for_journal("distsvc.service", "job ended")
    started = [e for e in entries if e.get("MESSAGE") == "job started"
               and e.get("ARGV") == "uname -n"]
    assert started and started[-1]["HOST"] in HOSTS, entries
