"""`distsvc-run --on CLUSTER`: commands in the foreground through srun on a real Slurm.

The bed (tests/slurmbed.py) is a single-node Slurm 22.05 in a booted container whose sshd is
the cluster's login node. Three reaches are tested where they differ:

- "direct": distsvc-run on this machine, reaching the login node over SSH itself
  (DISTSVC_DAEMON=off);
- "daemon": the same through a daemon of this machine (DISTSVC_DAEMON=required, so nothing
  can pass through the in-process fallback; the daemon's log names each command it carried);
- "here": distsvc-run inside the container, where Slurm's commands are (a cluster without
  `login`), srun its child.

Every command's work is shown to have gone through Slurm: its SLURM_JOB_ID, and that job's
name (`distsvc-run-TOKEN`) in sacct.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import conftest
import container
import helpers
import slurmbed

pytestmark = pytest.mark.timeout(600)

REACHES = ("direct", "daemon", "here")
CLUSTERS = {  # name -> its settings besides the login node
    "dtest": {},
    "badpart": {"partition": "nope"},
    "badacct": {"account": "nope"},
    "shortp": {"partition": "short"},
}


def toml(clusters: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, table in clusters.items():
        lines.append("[[clusters]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in {"name": name, **table}.items()]
    return "\n".join(lines) + "\n"


class Bed:
    """The cluster and its users: one on this machine (its login node over SSH), one in the
    container (Slurm's commands there)."""

    def __init__(self, c: container.Container, host: container.SshHost, home: Path,
                 shared: str) -> None:
        self.c, self.host, self.shared = c, host, shared
        self.machine = MachineUser(home, host)
        self.daemon: subprocess.Popen[bytes] | None = None


class MachineUser(conftest.Client):
    """A user on this machine whose clusters' login node is the container's sshd (the
    sshbed's Client without its hosts)."""

    def __init__(self, home: Path, host: container.SshHost) -> None:
        self.home = home
        ssh = home / ".ssh"
        ssh.mkdir(mode=0o700, parents=True)
        assert host.client_key is not None
        (ssh / "id_ed25519").write_bytes(host.client_key.read_bytes())
        (ssh / "id_ed25519").chmod(0o600)
        (ssh / "known_hosts").write_text(host.known_hosts_line + "\n")
        self.runtime = home / "run"
        self.runtime.mkdir(mode=0o700)
        self.workdir = home
        self.env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin",
                    "XDG_CONFIG_HOME": str(home / ".config"), "XDG_RUNTIME_DIR": str(self.runtime),
                    "LANG": "C.UTF-8", "DISTSVC_DAEMON": "off"}
        login = {"login": "login1", "address": host.address, "port": host.port,
                 "user": host.user}
        clusters = {name: {**login, **table} for name, table in CLUSTERS.items()}
        # A login node that is not there: a port nobody listens on.
        clusters["down"] = {**login, "port": free_port()}
        path = home / ".config" / "distsvc" / "config.toml"
        path.parent.mkdir(parents=True)
        path.write_text(toml(clusters))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.9", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    for c, host, _ in slurmbed.cluster_fixture():
        # A directory both sides have at the same path (the container's / is an overlay of
        # this machine's: made on both, so it is there however the overlay shows it).
        shared = tempfile.mkdtemp(prefix="distsvc-srun-", dir="/var/tmp")
        b = Bed(c, host, tmp_path_factory.mktemp("srun"), shared)
        try:
            os.chmod(shared, 0o755)
            c.run(["install", "-d", "-o", c.user, "-g", c.user, shared])
            b.machine.workdir = Path(shared)
            c.write_file(f"{c.home}/.config/distsvc/config.toml",
                         toml({"here": {}, **{k: v for k, v in CLUSTERS.items()
                                               if k != "dtest"}}), owner=c.user)
            yield b
        finally:
            if b.daemon is not None:
                b.daemon.terminate()
                b.daemon.wait(20)
            os.rmdir(shared)
        check_no_leaks(b)


def check_no_leaks(b: Bed) -> None:
    """No srun, guard or client left in the container, no job in the queue, and no process
    of our user left on this machine (counted from /proc)."""
    def inside() -> list[str]:
        out = b.c.run(["sh", "-c", "for p in /proc/[0-9]*; do "
                       "c=$(cat $p/comm 2>/dev/null) && echo \"$c\"; done"]).stdout
        return [n for n in out.split() if n in ("srun", "distsvc-run", "ssh")
                or n.startswith("distsvc-guard")]

    def queue() -> str:
        return str(b.c.run_as_user(["squeue", "-h", "-o", "%i %j"]).stdout.strip())

    helpers.wait_for(lambda: not inside() and not queue(), 20, "srun and jobs to go")
    home = str(b.machine.home).encode()
    mine = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if b"HOME=" + home + b"\0" in environ:
            mine.append(pid)
    assert not mine, f"processes of the test's user left on this machine: {mine}"


@pytest.fixture(params=REACHES)
def reach(request: pytest.FixtureRequest, bed: Bed) -> str:
    if request.param == "daemon" and bed.daemon is None:
        bed.daemon = conftest.start_daemon(bed.machine)
    return str(request.param)


def env_for(reach: str) -> dict[str, str]:
    return {"DISTSVC_DAEMON": "required" if reach == "daemon" else "off"}


def cluster_for(reach: str, name: str = "dtest") -> str:
    return "here" if reach == "here" and name == "dtest" else name


def run(bed: Bed, reach: str, *args: str, input: bytes = b"", cwd: str | None = None,
        env: dict[str, str] | None = None, timeout: float = 120
        ) -> subprocess.CompletedProcess[bytes]:
    """distsvc-run ARGS, from this machine or inside the container (as the test user)."""
    if reach == "here":
        done: subprocess.CompletedProcess[bytes] = bed.c.run_as_user(
            ["distsvc-run", *args], check=False, input=input, cwd=cwd or bed.shared,
            env=env, timeout=timeout)
        return done
    return bed.machine.run("distsvc-run", *args, input=input, cwd=cwd or bed.shared,
                           env={**env_for(reach), **(env or {})}, timeout=timeout)


def popen(bed: Bed, reach: str, *args: str) -> subprocess.Popen[bytes]:
    if reach == "here":
        return bed.c.popen_as_user(["distsvc-run", *args], cwd=bed.shared,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return bed.machine.popen("distsvc-run", *args, env=env_for(reach), cwd=bed.shared,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)


def sacct(bed: Bed, job: str) -> tuple[str, str]:
    """(the name of the job's step, the job's state), once accounting has both. The step's
    row has srun's --job-name at once; the allocation's reads "allocation" for a few seconds
    (slurmdbd learns the name later), so it gives only the state."""
    def ask() -> tuple[str, str] | None:
        out = bed.c.run_as_user(["sacct", "-n", "-P", "-j", job, "-o",
                                 "JobID,JobName,State"]).stdout
        rows = {row[0]: row[1:] for row in (line.split("|") for line in out.splitlines())}
        if f"{job}.0" not in rows or job not in rows:
            return None
        state = rows[job][1]
        active = ("RUNNING", "PENDING", "COMPLETING")
        return None if state in active else (rows[f"{job}.0"][0], state)
    result: tuple[str, str] = helpers.wait_for(ask, 30, f"sacct to know job {job}")
    return result


def our_jobs(bed: Bed) -> list[str]:
    """The queue's distsvc-run jobs: 'ID NAME STATE'."""
    out = bed.c.run_as_user(["squeue", "-h", "-o", "%i %j %T"]).stdout
    return [line for line in out.splitlines() if " distsvc-run-" in line]


def daemon_carried(bed: Bed, marker: str) -> bool:
    """Whether the daemon's log has a command with `marker` started on the cluster."""
    log = (bed.machine.home / "daemon.log").read_text()
    return any(marker in line and "job started" in line and "login node login1" in line
               for line in log.splitlines())


# --- the command as if it ran here -----------------------------------------------------------

def test_directory_environment_and_status_through_slurm(bed: Bed, reach: str) -> None:
    marker = f"mark-{reach}-{time.monotonic_ns()}"
    script = 'pwd; echo "$MARK"; echo "$SLURM_JOB_ID"; exit 3'
    done = run(bed, reach, "--on", cluster_for(reach), "sh", "-c", script, marker,
               env={"MARK": marker})
    assert done.returncode == 3, done.stderr
    where, mark, job = done.stdout.decode().splitlines()
    assert (where, mark) == (bed.shared, marker)
    name, state = sacct(bed, job)
    assert name.startswith("distsvc-run-") and state == "FAILED", (name, state)
    if reach == "daemon":
        assert daemon_carried(bed, marker)


def test_stdin_to_the_end_and_stdout_apart_from_stderr(bed: Bed, reach: str) -> None:
    data = os.urandom(4 << 20)
    done = run(bed, reach, "--on", cluster_for(reach), "sh", "-c",
               "sha256sum; echo to-stderr >&2", input=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split()[0] == hashlib.sha256(data).hexdigest()
    assert done.stderr == b"to-stderr\n"


def test_death_by_signal_is_128_plus_n(bed: Bed, reach: str) -> None:
    done = run(bed, reach, "--on", cluster_for(reach), "sh", "-c", "kill -TERM $$")
    assert done.returncode == 143, done.stderr
    # Only srun's own lines, in Slurm's words ("task 0: Terminated").
    assert all(line.startswith("srun: ") for line in done.stderr.decode().splitlines())


def test_no_stdin_and_a_command_the_node_lacks(bed: Bed, reach: str) -> None:
    done = run(bed, reach, "--on", cluster_for(reach), "-n", "cat", input=b"unread\n")
    assert (done.returncode, done.stdout) == (0, b""), done.stderr
    done = run(bed, reach, "--on", cluster_for(reach), "no-such-command-anywhere")
    assert done.returncode == 127
    assert "distsvc: no-such-command-anywhere: command not found on node vm" in \
        done.stderr.decode(), done.stderr


def test_distsvc_run_on_a_cluster(bed: Bed, reach: str) -> None:
    """`distsvc run --on` is `distsvc-run --on`."""
    if reach == "here":
        done = bed.c.run_as_user(["distsvc", "run", "--on", "here", "sh", "-c",
                                  'echo "$SLURM_JOB_NAME"'], check=False, cwd=bed.shared)
        out = done.stdout
    else:
        done = bed.machine.run("distsvc", "run", "--on", "dtest", "sh", "-c",
                               'echo "$SLURM_JOB_NAME"', cwd=bed.shared, env=env_for(reach))
        out = done.stdout.decode()
    assert done.returncode == 0, done.stderr
    assert out.startswith("distsvc-run-"), out


def test_workdir_on_the_cluster(bed: Bed, reach: str) -> None:
    done = run(bed, reach, "--on", cluster_for(reach), "-w", "/var", "pwd")
    assert (done.returncode, done.stdout) == (0, b"/var\n"), done.stderr


def test_a_relative_workdir_is_the_home_directorys_there(bed: Bed, reach: str) -> None:
    """As for a host: relative to the home on the login node (this machine: to the current
    directory); srun gets it whole."""
    bed.c.run_as_user(["mkdir", "-p", "rel dir"])
    cwd = bed.c.home if reach == "here" else bed.shared
    done = run(bed, reach, "--on", cluster_for(reach), "-w", "rel dir", "pwd", cwd=cwd)
    assert (done.returncode, done.stdout) == (0, f"{bed.c.home}/rel dir\n".encode()), \
        done.stderr


def test_a_directory_the_cluster_lacks_is_refused(bed: Bed, reach: str,
                                                  tmp_path: Path) -> None:
    if reach == "here":  # this machine has its own directory: -w names one it lacks
        done = run(bed, reach, "--on", "here", "-w", "/nowhere", "touch", "ran")
        where = "this machine"
    else:  # this machine's temporary directory: the container has its own /tmp
        done = run(bed, reach, "--on", "dtest", "touch", "ran", cwd=str(tmp_path))
        where = "its login node login1 (the cluster does not share it)"
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 4, lines
    assert len(lines) == 1 and where in lines[0] and "--workdir" in lines[0], lines
    assert not our_jobs(bed)


def test_the_guard_keeps_a_command_out_of_the_wrong_directory(bed: Bed) -> None:
    """srun --chdir to a directory the node lacks runs in /tmp; the guard refuses. (The bed's
    one node is its login node too, so the check before srun cannot miss it: srun's own
    command line, as distsvc builds it, shows the guard under the real srun.)"""
    import distsvc.slurm

    argv = distsvc.slurm.srun_argv([], "guardtest", "/gone", ["touch", "ran"], False)
    done = bed.c.run_as_user(argv, check=False, cwd="/tmp")
    assert done.returncode == 255
    assert "distsvc: /gone: no such directory on node vm" in done.stderr
    assert not bed.c.host_path("/tmp/ran").exists()


# --- refusals before anything runs -----------------------------------------------------------

@pytest.mark.parametrize(("cluster", "options", "reason"), [
    ("badpart", (), "Invalid partition name specified"),
    ("badacct", (), "Invalid account"),
    ("shortp", ("--timeout", "5m"), "Requested time limit is invalid"),
    ("dtest", ("--tasks", "3"), "--tasks: cluster"),
])
def test_refusals_in_one_line(bed: Bed, reach: str, cluster: str, options: tuple[str, ...],
                              reason: str) -> None:
    name = cluster_for(reach, cluster)
    done = run(bed, reach, "--on", name, *options, "touch", "ran")
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 4, lines
    assert len(lines) == 1 and reason in lines[0] and f"cluster {name}" in lines[0], lines
    assert not our_jobs(bed)


def test_an_unreachable_login_node(bed: Bed) -> None:
    for reach in ("direct", "daemon"):
        if reach == "daemon" and bed.daemon is None:
            bed.daemon = conftest.start_daemon(bed.machine)
        done = run(bed, reach, "--on", "down", "true")
        lines = done.stderr.decode().splitlines()
        assert done.returncode == 255, lines
        assert len(lines) == 1 and "cluster down: login node login1" in lines[0], lines


def test_an_unknown_cluster(bed: Bed, reach: str) -> None:
    done = run(bed, reach, "--on", "atlantis", "true")
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 2, lines
    assert len(lines) == 1 and "--on atlantis: no such cluster" in lines[0], lines
    assert "configured: " in lines[0] and "shortp" in lines[0]


# --- signals ----------------------------------------------------------------------------------

def started_job(bed: Bed, process: subprocess.Popen[bytes]) -> str:
    """The job ID the command printed first, once srun's step runs."""
    assert process.stdout is not None
    job = process.stdout.readline().decode().strip()
    assert job.isdigit(), (job, process.stderr.read() if process.stderr else b"")
    started_sleep(bed, job)
    return job


def started_sleep(bed: Bed, job: str) -> None:
    """Once the job runs, and its sleep (a SIGINT to the shell before it forks would be
    missed)."""
    helpers.wait_for(lambda: any(line.startswith(f"{job} ") and line.endswith("RUNNING")
                                 for line in our_jobs(bed)), 20, "the job to run")
    helpers.wait_for(lambda: bed.c.run(["pgrep", "-f", "^sleep 1111"], check=False)
                     .returncode == 0, 20, "the sleep")


SLEEPER = ("sh", "-c", 'echo "$SLURM_JOB_ID"; sleep 1111')


def test_one_sigint_ends_the_job(bed: Bed, reach: str) -> None:
    process = popen(bed, reach, "--on", cluster_for(reach), *SLEEPER)
    try:
        job = started_job(bed, process)
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 130
    finally:
        helpers.reap([process])
    assert not our_jobs(bed)
    assert sacct(bed, job)[1].startswith("CANCELLED")
    if reach == "daemon":  # the daemon carried it, and says how it ended
        log = (bed.machine.home / "daemon.log").read_text().splitlines()
        assert any("job ended" in line and "status=130" in line for line in log), log[-5:]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT])
def test_sigterm_sighup_sigquit_reach_the_command_and_end_the_job(
        bed: Bed, reach: str, signum: int) -> None:
    """As here: the command gets the signal itself (srun alone would SIGKILL it)."""
    process = popen(bed, reach, "--on", cluster_for(reach), *SLEEPER)
    try:
        job = started_job(bed, process)
        process.send_signal(signum)
        assert process.wait(30) == 128 + signum
    finally:
        helpers.reap([process])
    assert not our_jobs(bed)
    state = sacct(bed, job)[1]
    assert state == "FAILED" or state.startswith("CANCELLED"), state


def test_a_command_that_handles_sigterm_cleans_up(bed: Bed, reach: str) -> None:
    script = ('trap \'echo cleaned up; exit 7\' TERM; echo "$SLURM_JOB_ID"; sleep 1111 & '
              'wait')
    process = popen(bed, reach, "--on", cluster_for(reach), "sh", "-c", script)
    try:
        started_job(bed, process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 7
        assert process.stdout is not None and process.stdout.read() == b"cleaned up\n"
    finally:
        helpers.reap([process])
    helpers.wait_for(lambda: not our_jobs(bed), 20, "the job to end")


def test_a_vanished_client_cancels_the_job(bed: Bed, reach: str) -> None:
    process = popen(bed, reach, "--on", cluster_for(reach), *SLEEPER)
    try:
        job = started_job(bed, process)
        process.kill()
        process.wait(10)
    finally:
        helpers.reap([process])
    helpers.wait_for(lambda: not our_jobs(bed), 30, "the job to be cancelled")
    state = sacct(bed, job)[1]
    assert state == "FAILED" or state.startswith("CANCELLED"), state


# --- a terminal -------------------------------------------------------------------------------

def test_a_terminal_with_its_size(bed: Bed, reach: str) -> None:
    script = 'tty; stty size; echo "job=$SLURM_JOB_ID"'
    if reach == "here":
        inner = shlex.join(["distsvc-run", "--on", "here", "sh", "-c", script])
        done = bed.c.run_as_user(["script", "-qec", f"stty cols 123 rows 45; {inner}",
                                  "/dev/null"], check=False, cwd=bed.shared)
        out, status = done.stdout, done.returncode
    else:
        term = helpers.Terminal(bed.machine, "distsvc-run", "--on", "dtest", "sh", "-c",
                                script, size=(123, 45), env=env_for(reach), cwd=bed.shared)
        try:
            status = term.wait()
            out = term.output.decode()
        finally:
            term.close()
    assert status == 0, out
    assert "/dev/pts/" in out and "45 123" in out, out
    job = re.search(r"job=(\d+)", out)
    assert job is not None, out
    assert sacct(bed, job[1])[0].startswith("distsvc-run-")


def test_ctrl_c_on_the_terminal_ends_the_job(bed: Bed, reach: str) -> None:
    """The user's Ctrl-C: a byte on the terminal (raw mode here, srun --pty's terminal there),
    SIGINT from the node's terminal to the command; srun then ends the job."""
    script = 'echo "job=$SLURM_JOB_ID"; exec sleep 1111'
    if reach == "here":
        inner = shlex.join(["distsvc-run", "--on", "here", "sh", "-c", script])
        process: subprocess.Popen[bytes] = bed.c.popen_as_user(
            ["script", "-qec", inner, "/dev/null"], cwd=bed.shared, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE)
        assert process.stdin is not None and process.stdout is not None
        try:
            line = b""
            while b"job=" not in line or not line.endswith(b"\n"):
                line += process.stdout.read(1)
            job = line.decode().split("job=")[1].strip()
            started_sleep(bed, job)
            process.stdin.write(b"\x03")
            process.stdin.flush()
            assert process.wait(30) == 130
        finally:
            helpers.reap([process])
    else:
        term = helpers.Terminal(bed.machine, "distsvc-run", "--on", "dtest", "sh", "-c",
                                script, env=env_for(reach), cwd=bed.shared)
        try:
            found = re.search(rb"job=(\d+)\r?\n", term.read_until(b"\n", timeout=30))
            assert found is not None, term.output
            job = found[1].decode()
            started_sleep(bed, job)
            term.write(b"\x03")
            assert term.wait() == 130, term.output
        finally:
            term.close()
    assert not our_jobs(bed)
    state = sacct(bed, job)[1]
    assert state.startswith("CANCELLED") or state == "FAILED", state



@pytest.mark.parametrize("reach", ["direct", "here"])  # ~20 s each: srun's retries
def test_a_controller_that_does_not_answer(bed: Bed, reach: str) -> None:
    """slurmctld stopped: one line saying so, 255, before anything runs (then it is started
    again for the tests after)."""
    bed.c.run(["systemctl", "stop", "slurmctld.service"], timeout=60)
    try:
        done = run(bed, reach, "--on", cluster_for(reach), "touch", "ran")
    finally:
        bed.c.run(["systemctl", "start", "slurmctld.service"], timeout=60)
        helpers.wait_for(lambda: bed.c.run(["sh", "-c", "sinfo -h -o %T | grep -qx idle"],
                                           check=False).returncode == 0, 60, "Slurm again")
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 255, lines
    assert len(lines) == 1 and "Slurm's controller does not answer" in lines[0], lines


RESIZE_INSIDE = r"""
import fcntl, os, select, struct, subprocess, sys, termios, time
master, slave = os.openpty()
def size(fd, columns, rows):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
size(slave, 80, 24)
def tty():
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
child = subprocess.Popen(sys.argv[1:], stdin=slave, stdout=slave, stderr=slave,
                         preexec_fn=tty)
out, resized, deadline = b"", False, time.monotonic() + 60
while b"50 132" not in out and time.monotonic() < deadline:
    if select.select([master], [], [], 1)[0]:
        out += os.read(master, 65536)
    if b"READY" in out and not resized:
        size(master, 132, 50)
        resized = True
print(child.wait(30), repr(out))
"""


def test_window_size_changes_reach_the_command(bed: Bed, reach: str) -> None:
    script = 'trap "stty size; exit 0" WINCH; echo READY; while :; do sleep 0.1; done'
    if reach == "here":  # a terminal of its own inside, resized there
        done = bed.c.run_as_user(["python3", "-c", RESIZE_INSIDE, "distsvc-run", "--on",
                                  "here", "sh", "-c", script], cwd=bed.shared, check=False)
        status, _, out = done.stdout.partition(" ")
        assert (done.returncode, status) == (0, "0") and "50 132" in out, done
        return
    term = helpers.Terminal(bed.machine, "distsvc-run", "--on", "dtest", "sh", "-c", script,
                            size=(80, 24), env=env_for(reach), cwd=bed.shared)
    try:
        term.read_until(b"READY", timeout=30)
        helpers.set_window(term.master, 132, 50)
        term.read_until(b"50 132")
        assert term.wait() == 0
    finally:
        term.close()


# --- a reader that goes ----------------------------------------------------------------------

def test_a_closed_output_ends_the_job_as_sigpipe_would(bed: Bed, reach: str) -> None:
    """`distsvc-run --on C yes | head -1` returns, with 141 as a shell's `yes | head` gives
    `yes`, and the job it ran in is over (srun itself survives a closed pipe)."""
    cmd = ["--on", cluster_for(reach), "sh", "-c", 'echo "$SLURM_JOB_ID"; exec yes']
    # The status from inside the pipeline, on fd 3 (a file): `head` is the pipeline's.
    script = '{ "$@"; echo "$?" >&3; } 3>"$ST" | head -1'
    status = f"{bed.shared}/status-{reach}"
    if reach == "here":
        done = bed.c.run_as_user(["sh", "-c", script, "sh", "distsvc-run", *cmd], check=False,
                                 cwd=bed.shared, env={"ST": status}, timeout=60)
        said = bed.c.run_as_user(["cat", status]).stdout
        bed.c.run_as_user(["rm", status])
        out = str(done.stdout)
    else:
        done = subprocess.run(["sh", "-c", script, "sh", *bed.machine.command("distsvc-run",
                                                                             *cmd)],
                              env={**bed.machine.env, **env_for(reach), "ST": status},
                              cwd=bed.shared, capture_output=True, timeout=60)
        said = Path(status).read_text()
        os.unlink(status)
        out = done.stdout.decode()
    job = out.strip()
    assert job.isdigit(), (done.stdout, done.stderr)
    assert said.strip() == "141", (said, done.stderr)
    name, _ = sacct(bed, job)  # over (FAILED or CANCELLED: which end came first)
    assert name.startswith("distsvc-run-")
    assert not our_jobs(bed)


def test_a_directory_with_a_newline_is_the_one_it_runs_in(bed: Bed, reach: str) -> None:
    """-w "$D/a<newline>b" with "$D/a" there too: CMD runs in "$D/a<newline>b"."""
    first = f"{bed.shared}/nl-{reach}"
    tricky = first + "\nb"
    for directory in (first, tricky):
        os.makedirs(directory, exist_ok=True)
        bed.c.run_as_user(["mkdir", "-p", directory])
    try:
        done = run(bed, reach, "--on", cluster_for(reach), "-w", tricky, "pwd")
    finally:
        bed.c.run_as_user(["rmdir", tricky, first])
        for directory in (tricky, first):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(directory)
    assert (done.returncode, done.stdout.decode()) == (0, tricky + "\n"), done.stderr


def test_slurm_that_cannot_be_asked_is_255_not_a_refusal(bed: Bed) -> None:
    """No configuration for Slurm's commands: srun's fatal line, exit 255, nothing run."""
    bed.c.run_as_user(["touch", f"{bed.shared}/empty.conf"])
    try:
        done = bed.c.run_as_user(["distsvc-run", "--on", "here", "touch", "ran"], check=False,
                                 cwd=bed.shared, env={"SLURM_CONF": f"{bed.shared}/empty.conf"})
    finally:
        bed.c.run_as_user(["rm", f"{bed.shared}/empty.conf"])
    assert done.returncode == 255, done.stderr
    line, = str(done.stderr).splitlines()
    assert line.startswith("distsvc: cluster here: Slurm could not be asked ("), line
    assert not os.path.exists(f"{bed.shared}/ran")


def test_here_the_environment_is_filtered_as_for_hosts(bed: Bed) -> None:
    """No login node: the config's allow/deny applies (DISPLAY is denied by default), while
    what srun needs of this machine (HOME, PATH) stays."""
    done = bed.c.run_as_user(
        ["distsvc-run", "--on", "here", "sh", "-c",
         'echo "mark=$MARK display=${DISPLAY-unset} home=$HOME job=$SLURM_JOB_ID"'],
        check=False, cwd=bed.shared, env={"MARK": "m1", "DISPLAY": ":9"})
    assert done.returncode == 0, done.stderr
    said = dict(item.split("=", 1) for item in str(done.stdout).split())
    assert (said["mark"], said["display"], said["home"]) == ("m1", "unset", bed.c.home)
    name, _ = sacct(bed, said["job"])
    assert name.startswith("distsvc-run-")


@pytest.mark.parametrize("reach", ["direct", "daemon"])
def test_ctrl_c_during_a_check_that_waits_ends_it_at_once(bed: Bed, reach: str) -> None:
    """slurmctld stopped: the check's srun --test-only waits on it (~16 s, then 255). A
    Ctrl-C meanwhile ends the check: 130, nothing ran, and its srun on the login node is
    gone."""
    if reach == "daemon" and bed.daemon is None:
        bed.daemon = conftest.start_daemon(bed.machine)

    def checking() -> bool:
        return bed.c.run(["pgrep", "-f", "srun --test-only"], check=False).returncode == 0
    bed.c.run(["systemctl", "stop", "slurmctld.service"], timeout=60)
    try:
        client = popen(bed, reach, "--on", "dtest", "touch", "ran-after-ctrl-c")
        try:
            helpers.wait_for(checking, 30, "the check's srun --test-only")
            client.send_signal(signal.SIGINT)
            _, err = client.communicate(timeout=60)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        assert client.returncode == 130, err
        assert not checking()
    finally:
        bed.c.run(["systemctl", "start", "slurmctld.service"], timeout=60)
        helpers.wait_for(lambda: bed.c.run(["sh", "-c", "sinfo -h -o %T | grep -qx idle"],
                                           check=False).returncode == 0, 60, "Slurm again")
    assert not os.path.exists(f"{bed.shared}/ran-after-ctrl-c")
    if reach == "daemon":
        log = (bed.machine.home / "daemon.log").read_text()
        assert f"peer_pid={client.pid} status=130" in log, log  # the daemon carried it
