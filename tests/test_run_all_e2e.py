"""`distsvc run --all` against real OpenSSH servers, without and through a daemon (`client`):
every host's bytes kept intact and apart, one host's failure only its own, -j, and signals at
any moment, also while a host is still connecting. The `client` fixture checks that nothing is
left running on the hosts."""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

import conftest
import helpers
import sshbed

# The host's own address, third word of $SSH_CONNECTION: how a command knows where it runs.
WHERE = "set -- $SSH_CONNECTION; "
FAIL_ON_H2 = WHERE + '[ "$3" = 127.0.0.3 ] && { echo bad; exit 4; }; echo ok'


def by_host(output: bytes, names: Iterable[str]) -> dict[str, bytes]:
    """Each host's bytes, from lines prefixed `host: ` (each line is checked to have one)."""
    lines: dict[str, list[bytes]] = {name: [] for name in names}
    assert output.endswith(b"\n") or not output
    for line in output.split(b"\n")[:-1]:
        name, separator, rest = line.partition(b": ")
        assert separator and name.decode(errors="replace") in lines, line[:80]
        lines[name.decode()].append(rest)
    return {name: b"".join(line + b"\n" for line in got) for name, got in lines.items()}


def daemon_started_on(client: conftest.Client) -> list[str]:
    """The hosts the daemon started a command on, from its log (the proof it carried them)."""
    log = (client.home / "daemon.log").read_text(errors="replace")
    return re.findall(r"job started.*?host=(\S+)", log)


def catching_signals(pid: int) -> bool:
    """Whether the process catches SIGTERM yet (it does once its SignalCatcher is on)."""
    with open(f"/proc/{pid}/status") as status:
        caught = next(line for line in status if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    """Read from a pipe until `needle` was seen; all that was read."""
    got = b""
    deadline = time.monotonic() + timeout
    while needle not in got:
        assert time.monotonic() < deadline, f"{needle!r} not seen in {got!r}"
        if select.select([fd], [], [], 0.5)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"{needle!r} not seen before the end: {got!r}"
            got += chunk
    return got


def summary(stderr: bytes) -> str:
    lines = [line for line in stderr.decode().splitlines() if "failed on" in line]
    assert len(lines) == 1, stderr
    return lines[0]


def test_run_all_prefixes_output_by_host_and_fails_if_any_failed(
        client: conftest.Client) -> None:
    client.configure()
    result = client.run("distsvc", "run", "--all", "sh", "-c", FAIL_ON_H2)
    assert sorted(result.stdout.decode().splitlines()) == [
        "h1: ok", "h2: bad", "h3: ok", "h4: ok"]
    assert result.returncode == 4
    assert "failed on h2 (exit 4)" in result.stderr.decode()


def test_run_all_succeeds_when_all_succeed(client: conftest.Client) -> None:
    client.configure(hosts=client.bed.hosts[:2])
    result = client.run("distsvc", "run", "--all", "--", "echo", "hello world")
    assert sorted(result.stdout.decode().splitlines()) == ["h1: hello world", "h2: hello world"]
    assert result.returncode == 0
    if client.mode == "daemon":
        assert sorted(daemon_started_on(client)) == ["h1", "h2"]


def test_run_all_relays_bytes_exactly_in_whole_prefixed_lines(client: conftest.Client) -> None:
    bed = client.bed
    client.configure()
    written: dict[str, tuple[bytes, bytes]] = {}
    for host in bed.hosts:
        # Random bytes: newlines every ~256 bytes, invalid UTF-8, NULs, CRs; no final newline.
        out, err = os.urandom(1 << 20) + b"\xff end", os.urandom(200_000) + b"\xfe"
        (bed.home / f"runall-{host.address}.out").write_bytes(out)
        (bed.home / f"runall-{host.address}.err").write_bytes(err)
        written[host.name] = (out, err)
    try:
        result = client.run("distsvc", "run", "--all", "sh", "-c",
                            WHERE + 'cat "runall-$3.out"; cat "runall-$3.err" >&2', timeout=90)
    finally:
        for path in bed.home.glob("runall-*"):
            path.unlink()
    assert result.returncode == 0, result.stderr[-500:]
    names = [h.name for h in bed.hosts]
    stdout, stderr = by_host(result.stdout, names), by_host(result.stderr, names)
    for name, (out, err) in written.items():
        # A last line without a newline gets one: the next host's line starts on a line.
        assert hashlib.sha256(stdout[name]).hexdigest() == hashlib.sha256(out + b"\n").hexdigest()
        assert hashlib.sha256(stderr[name]).hexdigest() == hashlib.sha256(err + b"\n").hexdigest()
    if client.mode == "daemon":
        assert sorted(daemon_started_on(client)) == names


def test_run_all_reports_an_unreachable_host(client: conftest.Client) -> None:
    client.configure(hosts=client.bed.hosts[:1], unknown=[
        {"name": "dead", "address": "127.0.0.99", "port": 9, "user": client.bed.user}])
    result = client.run("distsvc", "run", "--all", "true")
    assert result.returncode == 255
    assert "dead (" in result.stderr.decode()


def test_run_all_keeps_the_others_output_when_hosts_fail(client: conftest.Client) -> None:
    """Unreachable, a refused host key and a connection lost mid-run: each named with its
    reason in one summary line, the other hosts' output complete."""
    bed = client.bed
    h1, h2, h3, h4 = bed.hosts
    with conftest.TcpProxy(h4.address, h4.port) as proxy:
        # h3's key is not known; h4 is reached through a proxy that is cut mid-run.
        (client.home / ".ssh" / "known_hosts").write_text(
            f"{h1.known_hosts_line}\n{h2.known_hosts_line}\n"
            f"[127.0.0.1]:{proxy.port} {h4.host_key}\n")
        client.configure(hosts=[h1, h2, h3], unknown=[
            {"name": "dead", "address": "127.0.0.99", "port": 9, "user": bed.user},
            {"name": "cut", "address": "127.0.0.1", "port": proxy.port, "user": bed.user}])
        # Every host but h4 waits for the cut (or 20 s), so the cut is mid-run for all.
        command = (WHERE + f'echo "before $3"; [ "$3" = {h4.address} ] && exec sleep 1501.5; '
                   'i=0; while [ ! -e runall-cut ] && [ $i -lt 200 ]; do sleep 0.1; '
                   'i=$((i+1)); done; echo "after $3"')
        process = client.popen("distsvc", "run", "--all", "sh", "-c", command,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert process.stdout is not None
            seen = read_until(process.stdout.fileno(), b"cut: before", 20)
            helpers.wait_for(lambda: bed.remote_processes("sleep 1501.5"), 20, "h4's command")
            proxy.cut()
            (bed.home / "runall-cut").touch()
            out, err = process.communicate(timeout=60)
            out = seen + out
        finally:
            (bed.home / "runall-cut").unlink(missing_ok=True)
            if process.poll() is None:
                process.kill()
    assert process.returncode == 255
    assert sorted(out.decode().splitlines()) == [
        f"cut: before {h4.address}",
        f"h1: after {h1.address}", f"h1: before {h1.address}",
        f"h2: after {h2.address}", f"h2: before {h2.address}"]
    line = summary(err)
    assert re.search(r"h3 \(host key not known", line), line
    assert "dead (" in line and "cut (connection lost" in line, line
    assert "h1" not in line and "h2" not in line
    assert b"Traceback" not in err and b"Secsh" not in err
    helpers.wait_for(lambda: not bed.remote_processes("1501.5"), 10, "h4's command to end")


# Each command counts the commands running at its start; its directory is removed before it
# exits, so a host started only after another ended never counts it.
COUNT_SLOTS = (WHERE + "mkdir -p runall-slots; mkdir runall-slots/$3; "
               "ls runall-slots | wc -l >> runall-counts; sleep 0.3; rmdir runall-slots/$3")


@pytest.mark.parametrize("jobs", [1, 2])
def test_run_all_runs_at_most_jobs_hosts_at_once(client: conftest.Client, jobs: int) -> None:
    bed = client.bed
    client.configure()
    try:
        result = client.run("distsvc", "run", "--all", "-j", str(jobs), "sh", "-c", COUNT_SLOTS)
        assert result.returncode == 0, result.stderr
        counts = [int(n) for n in (bed.home / "runall-counts").read_text().split()]
    finally:
        shutil.rmtree(bed.home / "runall-slots", ignore_errors=True)
        (bed.home / "runall-counts").unlink(missing_ok=True)
    assert len(counts) == 4 and max(counts) <= jobs, counts


def test_run_all_runs_every_host_at_once_by_default(client: conftest.Client) -> None:
    bed = client.bed
    client.configure()
    # A barrier: each command waits (up to 20 s) until all four have started.
    barrier = (WHERE + "mkdir -p runall-barrier; touch runall-barrier/$3; i=0; "
               "while [ $(ls runall-barrier | wc -l) -lt 4 ] && [ $i -lt 200 ]; do sleep 0.1; "
               "i=$((i+1)); done; ls runall-barrier | wc -l")
    try:
        result = client.run("distsvc", "run", "--all", "sh", "-c", barrier)
    finally:
        shutil.rmtree(bed.home / "runall-barrier", ignore_errors=True)
    assert result.returncode == 0
    assert sorted(result.stdout.decode().split()) == ["4", "4", "4", "4", "h1:", "h2:", "h3:",
                                                      "h4:"]


@pytest.mark.parametrize("args", [["-j", "0"], ["-j", "-1"], ["--jobs", "x"], ["-j", "65"],
                                  ["-j", "1.5"], ["--jobs="]])
def test_run_all_refuses_bad_jobs(client: conftest.Client, args: list[str]) -> None:
    client.configure()
    result = client.run("distsvc", "run", "--all", *args, "true")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and b"-j/--jobs" in result.stderr


def test_jobs_goes_with_all(client: conftest.Client) -> None:
    client.configure()
    result = client.run("distsvc", "run", "-j", "2", "true")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_run_all_signal_while_a_host_is_still_connecting(client: conftest.Client,
                                                         signum: int) -> None:
    """h2 does not answer (its sshd stopped); h1 runs; h3 and h4 wait for a slot (-j 2)."""
    bed = client.bed
    h1, h2, _, _ = bed.hosts
    # Far longer than the test waits: returning promptly must not mean waiting for it.
    client.configure(extra="connect_timeout = 100")
    marker = f"1502.{int(signum)}"
    started = bed.home / "runall-started"
    command = WHERE + f'echo "$3" >> runall-started; sleep {marker}'
    try:
        with h2.hung():
            process = client.popen("distsvc", "run", "--all", "-j", "2", "sh", "-c", command,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            helpers.wait_for(lambda: bed.remote_processes(f"sleep {marker}"), 20, "h1's command")
            process.send_signal(signum)
            _, err = process.communicate(timeout=30)
            assert process.returncode == 128 + signum
            line = summary(err)
            assert "h2 (interrupted while connecting)" in line, line
            assert "h3 (not started: interrupted)" in line and "h4 (not started" in line, line
            assert b"Traceback" not in err
        # h2 answers again. A daemon completes its handshake, but must not start the command
        # now; the next command on h2 shares that handshake (one at a time per host), so once
        # it is done, the interrupted one has had its chance.
        client.configure(hosts=[h2])
        after = client.run("distsvc", "run", "--all", "echo", "served")
        assert (after.returncode, after.stdout) == (0, b"h2: served\n"), after.stderr
        if client.mode == "daemon":
            assert daemon_started_on(client) == ["h1", "h2"]  # h2: only the second command
        assert started.read_text().split() == [h1.address]
    finally:
        started.unlink(missing_ok=True)
    helpers.wait_for(lambda: not bed.remote_processes(marker), 10, "h1's command to end")


def test_run_all_signal_at_any_moment_ends_every_command(client: conftest.Client) -> None:
    bed = client.bed
    client.configure()
    for attempt, delay in enumerate([0.0, 0.05, 0.2, 0.5, 1.0]):
        signum = (signal.SIGINT, signal.SIGTERM)[attempt % 2]
        marker = f"1503.{attempt}"
        process = client.popen("distsvc", "run", "--all", "sleep", marker,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        helpers.wait_for(lambda p=process: catching_signals(p.pid), 20, "the signal handlers")
        time.sleep(delay)
        process.send_signal(signum)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 128 + signum, (delay, err)
        assert b"Traceback" not in err
        helpers.wait_for(lambda m=marker: not bed.remote_processes(m), 10, "every command to end")


def test_run_all_ends_every_command_when_its_output_is_closed(client: conftest.Client) -> None:
    """`distsvc run --all yes | head`: the reader is gone, so every command is ended and the
    status is SIGPIPE's, as for a local command."""
    client.configure()
    process = client.popen("distsvc", "run", "--all", "yes", "1504.5",
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    read_until(process.stdout.fileno(), b": 1504.5\n", 20)
    process.stdout.close()
    assert process.wait(30) == 128 + signal.SIGPIPE
    assert b"Traceback" not in process.stderr.read()
    helpers.wait_for(lambda: not client.bed.remote_processes("1504.5"), 10, "the commands to end")


def test_run_all_signal_while_nobody_reads_its_output(client: conftest.Client) -> None:
    """A paused pager: our stdout is full and every host's output waits; Ctrl-C still ends
    every command and the run."""
    client.configure()
    process = client.popen("distsvc", "run", "--all", "yes", "1505.5",
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        helpers.wait_for(lambda: len([p for p in client.bed.remote_processes("1505.5")
                                      if p.split(None, 1)[1] == "yes 1505.5"]) == 4, 20,
                         "every command")
        time.sleep(1)  # the pipes fill up
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 130
    finally:
        if process.poll() is None:
            process.kill()
    helpers.wait_for(lambda: not client.bed.remote_processes("1505.5"), 10, "the commands to end")


def test_run_all_without_a_daemon_starts_one_for_the_next_run(bed: sshbed.Bed,
                                                              tmp_path: Path) -> None:
    """DISTSVC_DAEMON=auto (the default): no daemon answers, so the hosts are run from the
    client, and a daemon is started; the next run goes through it and its connections."""
    client = conftest.Client(bed, tmp_path / "client")
    client.env["DISTSVC_DAEMON"] = "auto"
    client.configure(hosts=bed.hosts[:2])
    first = client.run("distsvc", "run", "--all", "echo", "hi")
    assert (first.returncode, sorted(first.stdout.split(b"\n"))) == (
        0, [b"", b"h1: hi", b"h2: hi"])
    socket_path = client.runtime / "distsvc" / "distsvc.sock"
    helpers.wait_for(socket_path.exists, 20, "the daemon that the first run started")
    status = json.loads(client.run("distsvc", "status", "--json").stdout)
    try:
        assert status["connections"] == 0  # the first run did not go through it
        second = client.run("distsvc", "run", "--all", "echo", "again",
                            env={"DISTSVC_DAEMON": "required"})
        assert second.returncode == 0 and sorted(second.stdout.split(b"\n")) == [
            b"", b"h1: again", b"h2: again"]
        after = json.loads(client.run("distsvc", "status", "--json").stdout)
        assert after["connections"] >= 2
    finally:
        os.kill(status["pid"], signal.SIGTERM)
