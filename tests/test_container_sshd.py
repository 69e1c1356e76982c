"""The booted-systemd SSH host (tests/container.py `start_sshd`): a container's own sshd,
reached from the machine's network namespace through the test process's forwarder, whose user
has a systemd user manager. Real boots, real sshd, real ssh and paramiko; no mocks."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import conftest
import container
import helpers
from distsvc.adapters import ssh

# What distsvc will have to do on a host for a non-interactive session: find the runtime
# directory and the bus when PAM did not set them.
USER_BUS = ('echo "pam:${XDG_RUNTIME_DIR:-unset}"; '
            ': "${XDG_RUNTIME_DIR:=/run/user/$(id -u)}"; export XDG_RUNTIME_DIR; '
            'export DBUS_SESSION_BUS_ADDRESS="unix:path=$XDG_RUNTIME_DIR/bus"; ')


@pytest.fixture(scope="module")
def sd() -> Iterator[tuple[container.Container, container.SshHost]]:
    yield from container.sshd_fixture()


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def connect(host: container.SshHost) -> ssh.Connection:
    """A connection through distsvc's own SSH adapter (paramiko), host key checked."""
    assert host.client_key is not None
    target = ssh.Target(label=host.name, hostname=host.address, port=host.port, user=host.user,
                        identity_files=(str(host.client_key),), proxy_command=None,
                        proxy_jump=None, known_hosts_files=(str(host.known_hosts),),
                        accept_new=False, host_key_policy="strict")
    return ssh.connect(target, 20.0)


def idle(host: container.SshHost) -> None:
    """Wait until the forwarder carries no connection (those of earlier tests have ended)."""
    helpers.wait_for(lambda: host.forwarder.connections() == 0, 20,
                     "the forwarder's connections to end")


def counts() -> tuple[int, set[threading.Thread]]:
    return len(os.listdir("/proc/self/fd")), set(threading.enumerate())


def test_a_command_runs_as_the_containers_user(
        sd: tuple[container.Container, container.SshHost]) -> None:
    c, host = sd
    assert (host.user, host.uid, host.home) == (c.user, c.uid, c.home)
    assert host.address == container.SSH_ADDRESS and host.port > 0
    # One sshd inside, ours: the machine's own ssh.service is masked.
    assert c.run(["systemctl", "is-enabled", "ssh.service"], check=False).stdout == "masked\n"
    listening = [line.split()[3] for line in c.run(["ss", "-Htln"]).stdout.splitlines()]
    assert listening == [f"127.0.0.1:{host.port_inside}"], listening
    done = host.ssh("id -u; id -un; hostname; cat /proc/1/comm")
    assert done.stdout.split() == [str(c.uid), c.user, os.uname().nodename, "systemd"]
    # Through distsvc's adapter (paramiko), checking the host key like distsvc does.
    connection = connect(host)
    try:
        status, out = connection.run("id -u; set -- $SSH_CONNECTION; echo $3 $4", timeout=20)
    finally:
        connection.close()
    # Inside, the session comes from the forwarder to sshd's own address and port.
    assert (status, out.decode().split()) == (0, [str(c.uid), "127.0.0.1",
                                                  str(host.port_inside)])


def test_an_unknown_key_is_refused(sd: tuple[container.Container, container.SshHost],
                                   tmp_path: Path) -> None:
    _, host = sd
    stranger = tmp_path / "stranger"
    container.client_keygen(stranger)
    done = host.ssh("true", key=stranger, check=False)
    assert done.returncode == 255 and "Permission denied" in done.stderr


def test_the_user_manager_answers_a_non_interactive_session(
        sd: tuple[container.Container, container.SshHost]) -> None:
    """PAM (pam_systemd) sets XDG_RUNTIME_DIR and DBUS_SESSION_BUS_ADDRESS for a plain
    ``ssh host CMD`` here; the script sets them only when unset, as distsvc must."""
    c, host = sd
    unit = unique("distsvc-probe")
    script = (USER_BUS + f"systemd-run --user --unit={unit} --wait --pipe -q true && echo ran; "
              "systemctl --user show -p Version --value; echo bus:$DBUS_SESSION_BUS_ADDRESS")
    out = host.ssh(f"sh -c '{script}'").stdout.split()
    assert out[0] == f"pam:/run/user/{c.uid}", "PAM did not set XDG_RUNTIME_DIR"
    assert out[1] == "ran"
    version = c.run(["systemctl", "--version"]).stdout.split()[1]
    assert out[2].startswith(f"{version}") and out[2].split("-")[0].split(".")[0] == version
    assert out[3] == f"bus:unix:path=/run/user/{c.uid}/bus"
    # It was a logind session, which ended with the connection.
    where = host.ssh("cat /proc/self/cgroup; echo $XDG_SESSION_ID").stdout.split()
    assert any(line.endswith(".scope") and "/session-" in line for line in where), where


def test_without_pam_the_session_finds_the_manager_by_itself(
        sd: tuple[container.Container, container.SshHost]) -> None:
    """A host whose sshd runs without PAM: no XDG_RUNTIME_DIR in the session, and the user's
    manager still answers once it is set to /run/user/UID."""
    c, host = sd
    with container.sshd(c, container.client_keygen(c.workdir / "bare_ed25519"),
                        client_key=c.workdir / "bare_ed25519", port_inside=2223,
                        use_pam=False) as bare:
        assert bare.port != host.port
        unit = unique("distsvc-probe")
        script = (USER_BUS + f"systemd-run --user --unit={unit} --wait --pipe -q true && "
                  "echo ran; systemctl --user show -p Version --value")
        out = bare.ssh(f"sh -c '{script}'").stdout.split()
        assert out[:2] == ["pam:unset", "ran"] and out[2][0].isdigit()


def test_a_transient_unit_outlives_the_ssh_connection(
        sd: tuple[container.Container, container.SshHost]) -> None:
    c, host = sd
    unit = unique("distsvc-probe")
    host.ssh(f"sh -c '{USER_BUS} systemd-run --user -q --unit={unit} "
             f"-p RemainAfterExit=yes sleep 30'")
    idle(host)  # the connection is closed
    helpers.wait_for(
        lambda: c.run(["loginctl", "list-sessions", "--no-legend"]).stdout.strip() == "", 20,
        "logind to remove the ssh session")
    try:
        state = c.run_as_user(["systemctl", "--user", "show", "-p", "ActiveState,SubState",
                               f"{unit}.service"]).stdout.split()
        assert state == ["ActiveState=active", "SubState=running"]
        # And over a new connection, as distsvc would look.
        again = host.ssh(f"sh -c '{USER_BUS} systemctl --user is-active {unit}'")
        assert again.stdout.split()[-1] == "active"
    finally:
        c.run_as_user(["systemctl", "--user", "stop", f"{unit}.service"], check=False)


ENDS = """\
import hashlib, socket, sys
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening", flush=True)
def read_all(conn):
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data
# First connection: this side ends first, then reads what the client still sends.
conn, _ = listener.accept()
conn.sendall(b"hi"); conn.shutdown(socket.SHUT_WR)
print("first", hashlib.sha256(read_all(conn)).hexdigest(), flush=True)
conn.close()
# Second: the client ends first, and gets its bytes back after its EOF.
conn, _ = listener.accept()
conn.sendall(read_all(conn)); conn.close()
print("second done", flush=True)
"""


def read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def test_the_forwarder_passes_eof_both_ways(
        sd: tuple[container.Container, container.SshHost]) -> None:
    c, _ = sd
    payload = os.urandom(3 << 20)
    server = c.popen(["/usr/bin/python3", "-c", ENDS, "7001"], stdout=subprocess.PIPE,
                     text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == "listening\n"
        with container.Forwarder(c.pid, ("127.0.0.1", 7001), "127.0.0.9") as forwarder:
            # The far side's EOF arrives while this side may still write.
            with socket.create_connection((forwarder.address, forwarder.port)) as s:
                assert read_all(s) == b"hi"
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                assert server.stdout.readline().split() == [
                    "first", hashlib.sha256(payload).hexdigest()]
                assert s.recv(1) == b""
            # This side's EOF arrives, and the far side's answer after it.
            with socket.create_connection((forwarder.address, forwarder.port)) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                assert hashlib.sha256(read_all(s)).digest() == hashlib.sha256(payload).digest()
            assert server.stdout.readline() == "second done\n"
            helpers.wait_for(lambda: forwarder.connections() == 0, 20, "both connections closed")
        assert server.wait(20) == 0
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


def test_stop_leaves_no_fds_nor_threads(
        sd: tuple[container.Container, container.SshHost]) -> None:
    c, host = sd
    idle(host)
    before_fds, before_threads = counts()
    key = c.workdir / "leak_ed25519"
    other = container.start_sshd(c, container.client_keygen(key), client_key=key,
                                 port_inside=2224)
    stopped = False
    try:
        assert other.ssh("echo one").stdout == "one\n"
        # Open at stop(): a running session, an idle connection, a half-closed one.
        session = subprocess.Popen(other.ssh_argv("sleep 60"), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        quiet = socket.create_connection((other.address, other.port))
        half = socket.create_connection((other.address, other.port))
        half.shutdown(socket.SHUT_WR)
        assert quiet.recv(4) == b"SSH-"
        helpers.wait_for(lambda: other.forwarder.connections() >= 2, 20, "connections")
        other.stop()
        stopped = True
        assert session.wait(20) == 255  # cut, as when the network goes
        quiet.settimeout(20)
        assert read_all(quiet).endswith(b"\r\n")  # the rest of the banner, then EOF
        quiet.close()
        half.close()
    finally:
        if not stopped:
            other.stop()
    after_fds, after_threads = counts()
    assert after_threads == before_threads, after_threads ^ before_threads
    assert after_fds == before_fds, os.listdir("/proc/self/fd")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((other.address, other.port), timeout=5).close()
    state = c.run(["systemctl", "is-active", other.unit], check=False).stdout.strip()
    assert state != "active", state
    # The module's host is untouched.
    assert host.ssh("echo still").stdout == "still\n"


def test_figures(sd: tuple[container.Container, container.SshHost]) -> None:
    """Not assertions (a shared machine): the figures for the report, printed (pytest -s)."""
    _, host = sd
    plain = []
    for _ in range(20):
        started = time.monotonic()
        host.ssh("true")
        plain.append(time.monotonic() - started)
    connection = connect(host)
    warm = []
    try:
        for _ in range(20):
            started = time.monotonic()
            assert connection.run("true", timeout=20)[0] == 0
            warm.append(time.monotonic() - started)
    finally:
        connection.close()
    print(f"\nsshd reachable {host.started_in * 1000:.0f} ms after boot; "
          f"`ssh host true` median {statistics.median(plain) * 1000:.0f} ms "
          f"(max {max(plain) * 1000:.0f}); on a warm paramiko connection median "
          f"{statistics.median(warm) * 1000:.1f} ms (max {max(warm) * 1000:.1f})")


@pytest.mark.parametrize("mode", ["off", "required"])
def test_distsvc_runs_commands_there(sd: tuple[container.Container, container.SshHost],
                                     tmp_path: Path, mode: str) -> None:
    """distsvc-run, in-process and through a daemon of this machine, reaches the host like
    any other: its own config, key and known_hosts, nothing of distsvc installed there."""
    c, host = sd
    assert host.client_key is not None
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    key = home / ".ssh" / "id_ed25519"
    key.write_bytes(host.client_key.read_bytes())
    key.chmod(0o600)
    (home / ".ssh" / "known_hosts").write_text(host.known_hosts_line + "\n")
    (home / ".config" / "distsvc").mkdir(parents=True)
    (home / ".config" / "distsvc" / "config.toml").write_text(
        f'[[hosts]]\nname = "{host.name}"\naddress = "{host.address}"\n'
        f'port = {host.port}\nuser = "{host.user}"\n')
    (home / "run").mkdir(mode=0o700)
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "XDG_CONFIG_HOME": str(home / ".config"), "XDG_RUNTIME_DIR": str(home / "run"),
           "LANG": "C.UTF-8", "DISTSVC_DAEMON": mode}
    bin_dir = container.VENV_BIN
    daemon = None
    if mode == "required":
        daemon = subprocess.Popen([str(bin_dir / "distsvc"), "daemon"], env=env, cwd="/",
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        helpers.wait_for(lambda: (home / "run" / "distsvc" / "distsvc.sock").exists(), 20,
                         "the daemon's socket")
    try:
        done = subprocess.run([str(bin_dir / "distsvc-run"), "sh", "-c", "id -u; exit 3"],
                              env=env, cwd="/", capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout, done.stderr) == (3, f"{c.uid}\n", "")
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(20)


def test_distsvcs_job_probe_finds_the_user_manager(
        sd: tuple[container.Container, container.SshHost]) -> None:
    """The probe of jobs/remote.py, over distsvc's own connection: this host is the one
    with systemd (the sshbed hosts are the ones without)."""
    import distsvc.jobs.remote as remote

    c, host = sd
    connection = connect(host)
    try:
        status, out = connection.run(remote.probe_script("0123abcd" * 2), timeout=60)
    finally:
        connection.close()
    caps = remote.read_probe(out)
    assert (status, caps.mode, caps.why_no_systemd) == (0, "systemd", None), out.decode()
    assert caps.root == f"{c.home}/.local/state/distsvc/jobs-from/{'0123abcd' * 2}"


def test_a_bed_users_daemon_places_a_job_there(
        sd: tuple[container.Container, container.SshHost],
        daemon_client: conftest.Client) -> None:
    """The recipe for tests that use this host beside the sshbed hosts: the sshbed client's
    key let in (by an sshd of its own here: the module's has another key), its known_hosts
    line and its user in the client's configuration. The client's daemon, on this machine,
    reaches it, and a job placed there runs as a unit of the user's manager."""
    c, _ = sd
    client = daemon_client
    bed_key = client.bed.client_key.with_name(client.bed.client_key.name + ".pub").read_text()
    with container.sshd(c, bed_key, port_inside=2225) as host:
        with open(client.home / ".ssh" / "known_hosts", "a") as known:
            known.write(host.known_hosts_line + "\n")
        client.configure(hosts=[], unknown=[{"name": host.name, "address": host.address,
                                             "port": host.port, "user": host.user}])
        ran = client.run("distsvc-run", "id", "-u", cwd="/")
        assert (ran.returncode, ran.stdout, ran.stderr) == (0, f"{c.uid}\n".encode(), b"")
        started = client.run("distsvc", "job", "start", "--json", "--host", host.name, "--",
                             "sh", "-c", "echo from the job", cwd="/")
        assert started.returncode == 0, started.stderr
        record = json.loads(started.stdout)["job"]
        assert record["placement"]["mode"] == "systemd", record["placement"]
        assert client.run("distsvc", "job", "wait", record["id"], cwd="/").returncode == 0
        logs = client.run("distsvc", "job", "logs", record["id"], cwd="/")
        assert logs.stdout == b"from the job\n"
