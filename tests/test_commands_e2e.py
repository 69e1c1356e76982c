"""distsvc's other commands against real OpenSSH servers: env, purge, shell (run --all: in
test_run_all_e2e.py)."""

from __future__ import annotations

import stat

import conftest
import helpers


def test_saved_environment(client: conftest.Client) -> None:
    client.configure(hosts=client.bed.hosts[:1])
    assert client.run("distsvc", "env", "set", "DISTSVC_SAVED", "from the file").returncode == 0
    saved = client.home / ".config" / "distsvc" / "environment.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert client.run("distsvc", "env", "print").stdout == b"DISTSVC_SAVED='from the file'\n"
    result = client.run("distsvc-run", "sh", "-c", 'echo "$DISTSVC_SAVED"')
    assert result.stdout == b"from the file\n"
    assert client.run("distsvc", "env", "delete", "DISTSVC_SAVED").returncode == 0
    assert client.run("distsvc-run", "sh", "-c", 'echo "${DISTSVC_SAVED-gone}"').stdout \
        == b"gone\n"
    bad = client.run("distsvc", "env", "delete", "NOT_THERE")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1


def test_env_export_saves_the_filtered_environment(client: conftest.Client) -> None:
    result = client.run("distsvc", "env", "export",
                        env={"DISTSVC_EXPORTED": "yes", "DISPLAY": ":1"})
    assert result.returncode == 0
    printed = client.run("distsvc", "env", "print").stdout.decode()
    assert "DISTSVC_EXPORTED=yes" in printed and "DISPLAY" not in printed
    assert client.run("distsvc", "env", "delete", "--all").returncode == 0
    assert client.run("distsvc", "env", "print").stdout == b""


def test_purge_lists_and_kills_stray_processes(client: conftest.Client) -> None:
    client.configure(hosts=client.bed.hosts[:1])
    # A daemon that escaped its session: neither the wrapper nor the watcher ends it.
    started = client.run("distsvc-run", "sh", "-c",
                         "setsid sleep 1201.5 </dev/null >/dev/null 2>&1 &")
    assert started.returncode == 0
    helpers.wait_for(lambda: client.bed.remote_processes("1201.5"), 10, "the stray")
    listed = client.run("distsvc", "purge")
    assert "h1\t" in listed.stdout.decode() and "sleep 1201.5" in listed.stdout.decode()
    assert "sshd" not in listed.stdout.decode()
    kept = client.run("distsvc", "purge", "--whitelist", r"sleep 1201\.5")
    assert "1201.5" not in kept.stdout.decode()
    killed = client.run("distsvc", "purge", "--kill")
    assert killed.returncode == 0 and "killed" in killed.stderr.decode()
    helpers.wait_for(lambda: not client.bed.remote_processes("1201.5"), 5, "the stray to end")


def test_purge_rejects_a_bad_regular_expression(client: conftest.Client) -> None:
    client.configure(hosts=client.bed.hosts[:1])
    result = client.run("distsvc", "purge", "--whitelist", "(")
    assert result.returncode == 2 and b"bad regular expression" in result.stderr


def test_shell_is_a_login_shell_in_the_current_directory(client: conftest.Client) -> None:
    client.configure(hosts=client.bed.hosts[:1])
    term = helpers.Terminal(client, "distsvc-shell")
    try:
        term.write(b'echo "where=$PWD"; shopt -q login_shell && echo LOGIN; exit 7\n')
        assert term.wait() == 7
        out = term.output.decode()
        assert f"where={client.workdir}" in out and "LOGIN" in out
    finally:
        term.close()
