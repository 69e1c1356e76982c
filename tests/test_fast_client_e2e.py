"""`distsvc-run CMD` through a real daemon on its fast path (actions/client.run_fast): the
daemon applies the client's own configuration and environment; what it cannot do (a bad
configuration, no hosts) is done by the full client as without a daemon; and the path stays
light: a fresh interpreter imports exactly the modules allowed below."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import conftest
from distsvc import __version__

# What `distsvc-run CMD` may import beyond a bare interpreter's modules, with a daemon
# answering: the light distsvc modules, and the C halves of socket, signal, json and struct
# (their Python halves import enum, re, selectors, collections: ~10 ms and ~10 ms of CPU per
# call; struct's is one more module to find). errno, fcntl and pwd only off that path (the
# daemon's lock, a runtime directory in /tmp): each module costs a call ~0.1 ms.
FAST_PATH_MODULES = {
    "__future__", "_json", "_socket", "_struct", "select",
    "distsvc", "distsvc.actions", "distsvc.actions.client", "distsvc.actions.events",
    "distsvc.adapters", "distsvc.adapters.unix",  # adapters.terminal only with a terminal
    "distsvc.commands", "distsvc.commands.common", "distsvc.commands.run", "distsvc.errors",
    "distsvc.paths", "distsvc.protocol",
}
MODULES = "import sys; sys.stdout.write(' '.join(sorted(sys.modules)))"


def server_address(client: conftest.Client, **kw: object) -> str:
    """The address of the host the command ran on (sshd's view of the connection)."""
    result = client.run("distsvc-run", "sh", "-c", "set -- $SSH_CONNECTION; echo $3", **kw)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().split()[0]


def test_the_fast_path_imports_exactly_the_light_modules(
        daemon_client: conftest.Client) -> None:
    daemon_client.configure(daemon_client.bed.hosts[:1])
    bare = set(subprocess.run([sys.executable, "-c", MODULES], env=daemon_client.env,
                              capture_output=True, text=True, check=True).stdout.split())
    code = ("import sys, distsvc.commands.run as r\n"
            "status = r.main(['true'])\n"
            f"{MODULES}\n"
            "sys.exit(status)")
    done = subprocess.run([sys.executable, "-c", code], env=daemon_client.env,
                          cwd=daemon_client.workdir, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) - bare == FAST_PATH_MODULES - bare


def test_the_program_ends_at_once_with_the_status_after_exit_handlers_and_flushing(
        daemon_client: conftest.Client) -> None:
    """As the program (main() without argv), the fast path ends with os._exit: atexit
    handlers run and buffered output is written, but no teardown (a __del__ would print)."""
    daemon_client.configure(daemon_client.bed.hosts[:1])
    code = ("import atexit, sys\n"
            "class Torn:\n"
            "    def __del__(self): print('teardown')\n"
            "kept = Torn()\n"
            "atexit.register(lambda: print('exit handler'))\n"
            "sys.stdout.write('buffered\\n')\n"
            "sys.argv = ['distsvc-run', 'sh', '-c', 'echo out; echo err >&2; exit 7']\n"
            "import distsvc.commands.run\n"
            "distsvc.commands.run.main()\n"
            "print('not reached')\n")
    done = subprocess.run([sys.executable, "-c", code], env=daemon_client.env,
                          cwd=daemon_client.workdir, capture_output=True, timeout=60)
    assert (done.returncode, done.stderr) == (7, b"err\n")
    # (The command's "out" is written by the daemon to our stdout as the command runs.)
    assert sorted(done.stdout.splitlines()) == [b"buffered", b"exit handler", b"out"]
    # The installed script goes the same way.
    result = daemon_client.run("distsvc-run", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")


def test_the_installed_script_starts_without_site_and_loads_it_for_the_full_client(
        daemon_client: conftest.Client) -> None:
    """scripts/setup.sh writes .venv/bin/distsvc-run with `python -S` (scripts/fast-launcher.sh):
    the fast path needs no site-packages; without a daemon the full client loads `site` and
    finds paramiko there."""
    script = conftest.BIN / "distsvc-run"
    assert script.read_text().splitlines()[0] == f"#!{conftest.BIN / 'python'} -S"
    daemon_client.configure(daemon_client.bed.hosts[:1])
    address = daemon_client.bed.hosts[0].address
    assert server_address(daemon_client) == address
    assert server_address(daemon_client, env={"DISTSVC_DAEMON": "off"}) == address
    version = daemon_client.run("distsvc-run", "--version")
    assert (version.returncode, version.stdout.decode()) == (0, f"distsvc {__version__}\n")


def test_a_bad_configuration_names_each_field_as_without_a_daemon(
        daemon_client: conftest.Client) -> None:
    path = daemon_client.configure(daemon_client.bed.hosts[:1], extra='max_age = "soon"')
    path.write_text(path.read_text().replace("port = ", 'port = "x" #'))
    through = daemon_client.run("distsvc-run", "true")
    alone = daemon_client.run("distsvc-run", "true", env={"DISTSVC_DAEMON": "off"})
    assert through.returncode == alone.returncode == 2
    assert through.stderr == alone.stderr
    line = through.stderr.decode()
    assert line.count("\n") == 1 and str(path) in line
    assert "max_age" in line and "hosts[0].port" in line
    # The daemon still serves, and a fixed file counts at once.
    daemon_client.configure(daemon_client.bed.hosts[:1])
    assert daemon_client.run("distsvc-run", "true").returncode == 0


def test_a_changed_configuration_file_counts_at_once(daemon_client: conftest.Client) -> None:
    first, second = daemon_client.bed.hosts[:2]
    daemon_client.configure([first])
    assert server_address(daemon_client) == first.address
    daemon_client.configure([second])
    assert server_address(daemon_client) == second.address


def test_each_client_gets_its_own_configuration_and_hosts_variable(
        daemon_client: conftest.Client, tmp_path: Path) -> None:
    first, second, third = daemon_client.bed.hosts[:3]
    daemon_client.configure([first, second])
    assert server_address(daemon_client, env={"DISTSVC_HOSTS": second.name}) == second.address
    other = tmp_path / "other-config"
    (other / "distsvc").mkdir(parents=True)
    (other / "distsvc" / "config.toml").write_text(
        f'[[hosts]]\nname = "{third.name}"\naddress = "{third.address}"\n'
        f'port = {third.port}\nuser = "{daemon_client.bed.user}"\n')
    assert server_address(daemon_client, env={"XDG_CONFIG_HOME": str(other)}) == third.address
    assert server_address(daemon_client) in (first.address, second.address)


def test_no_hosts_runs_here_through_the_full_client(daemon_client: conftest.Client) -> None:
    daemon_client.configure([])
    result = daemon_client.run("distsvc-run", "sh", "-c", "echo here; exit 4")
    assert (result.returncode, result.stdout) == (4, b"here\n")
    assert b"no hosts configured; running on this machine" in result.stderr


def test_the_saved_environment_and_the_filter_apply(daemon_client: conftest.Client) -> None:
    daemon_client.configure(daemon_client.bed.hosts[:1], extra='[env]\ndeny = ["SECRET_*"]')
    assert daemon_client.run("distsvc", "env", "set", "SAVED", "yes").returncode == 0
    result = daemon_client.run(
        "distsvc-run", "sh", "-c", 'echo "${SAVED:-} ${SECRET_TOKEN:-none} ${MINE:-}"',
        env={"SECRET_TOKEN": "x", "MINE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"yes none 1\n"


@pytest.mark.parametrize("program", ["distsvc-run", "distsvc run"])
@pytest.mark.parametrize("closed", ["<&-", ">&-", "2>&-"])
def test_a_closed_standard_descriptor_is_dev_null_for_the_command(
        daemon_client: conftest.Client, closed: str, program: str) -> None:
    """`distsvc-run cmd >&-` (cron jobs, `exec >&-` scripts): as with OpenSSH's client, the
    closed descriptor is /dev/null for the command, and the status comes back whole. Before,
    a closed stdout made the fast path's exit fail (exit 1 and a traceback), and whichever of
    0-2 was closed became the daemon's socket, carried to the command as its own (with
    `distsvc run` too, the full client's way)."""
    daemon_client.configure(daemon_client.bed.hosts[:1])
    command = ("read line; echo \"in=$line\"; echo out; echo err >&2; "
               "ls -l /proc/self/fd/0 /proc/self/fd/1 /proc/self/fd/2 | grep -c socket; exit 3")
    argv = daemon_client.command(*program.split(), "sh", "-c", command)
    done = subprocess.run(["sh", "-c", f'exec "$@" {closed}', "sh", *argv],
                          env={**daemon_client.env, "DISTSVC_DAEMON": "required"},
                          cwd=daemon_client.workdir, input=b"typed\n", capture_output=True,
                          timeout=60)
    expected_out = {"<&-": b"in=\nout\n0\n", ">&-": b"", "2>&-": b"in=typed\nout\n0\n"}[closed]
    expected_err = b"" if closed == "2>&-" else b"err\n"
    assert (done.returncode, done.stdout, done.stderr) == (3, expected_out, expected_err)


def test_the_run_module_runs_as_a_program(daemon_client: conftest.Client) -> None:
    """`python -m distsvc.commands.run` reaches every definition (its __main__ block once
    stood above some, and the full client failed with a NameError)."""
    daemon_client.configure(daemon_client.bed.hosts[:1])
    done = subprocess.run([sys.executable, "-m", "distsvc.commands.run", "sh", "-c", "exit 5"],
                          env={**daemon_client.env, "DISTSVC_DAEMON": "off"},
                          cwd=daemon_client.workdir, capture_output=True, timeout=60)
    assert (done.returncode, done.stderr) == (5, b"")


def test_the_full_client_started_without_site_gets_the_path_a_plain_start_has() -> None:
    """The launcher's `python -S` plus distsvc's directory, then commands.run.load_site(): the
    same sys.path, in the same order, as the interpreter started normally (before, distsvc's
    directory came first, ahead of the user site)."""
    script = conftest.BIN / "distsvc-run"
    appended = [line for line in script.read_text().splitlines()
                if line.strip().startswith("sys.path.append(")]
    assert len(appended) == 1
    show = "import sys, json; print(json.dumps(sys.path[1:]))"
    plain = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True,
                           check=True).stdout
    launched = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys\n{appended[0].strip()}\n"
         "import distsvc.commands.run\ndistsvc.commands.run.load_site()\n" + show],
        capture_output=True, text=True, check=True).stdout
    assert launched == plain
