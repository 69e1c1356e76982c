"""`distsvc job ... --on CLUSTER`: jobs handed to a real Slurm (tests/slurmbed.py) by a real
daemon, with the cluster's login node the container's sshd (the daemon on this machine), and
with Slurm's commands on the daemon's own machine (a daemon inside the container).

Every test proves that Slurm ran the work: the sacct record under our job name and the Slurm
job ID the record holds, SLURM_JOB_ID in the job's own environment; the clients go through
the daemon (DISTSVC_DAEMON=required) and its log names each submission.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import container
import helpers
import jsondoc
import slurmbed
from conftest import BIN
from helpers import client_job, job_status, wait_for

Bed = tuple[container.Container, container.SshHost, slurmbed.Cluster]
CLUSTER = "hpc"


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    yield from slurmbed.cluster_fixture()


class User:
    """A user of this machine whose daemon reaches the cluster through its login node."""

    def __init__(self, home: Path, host: container.SshHost) -> None:
        self.home = home
        ssh = home / ".ssh"
        ssh.mkdir(parents=True, mode=0o700)
        assert host.client_key is not None
        key = ssh / "id_ed25519"
        key.write_bytes(host.client_key.read_bytes())
        key.chmod(0o600)
        (ssh / "known_hosts").write_text(host.known_hosts_line + "\n")
        (home / "run").mkdir(mode=0o700)
        login = (f'login = "{host.name}"\naddress = "{host.address}"\nport = {host.port}\n'
                 f'user = "{host.user}"\n')
        config = home / ".config" / "distsvc" / "config.toml"
        config.parent.mkdir(parents=True)
        config.write_text(
            f'[[clusters]]\nname = "{CLUSTER}"\n{login}'
            f'[[clusters]]\nname = "nopart"\npartition = "nosuch"\n{login}'
            f'[[clusters]]\nname = "short"\npartition = "short"\n{login}'
            f'[[clusters]]\nname = "noacct"\naccount = "nosuch"\n{login}'
            '[[clusters]]\nname = "away"\nlogin = "away"\naddress = "127.0.0.1"\nport = 9\n'
            f'user = "{host.user}"\n')
        self.env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "XDG_CONFIG_HOME": str(home / ".config"),
                    "XDG_RUNTIME_DIR": str(home / "run"),
                    "XDG_STATE_HOME": str(home / ".local" / "state"),
                    "LANG": "C.UTF-8", "DISTSVC_DAEMON": "required",
                    "DISTSVC_TEST_VAR": "carried"}
        self.workdir = host.home  # the job's directory: the cluster's (the container's) home

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(BIN / args[0]), *args[1:]], env=self.env, cwd="/",
                              capture_output=True, timeout=timeout, check=False)

    def job(self, *args: str, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess[bytes]:
        return client_job(self, *args, check=check, timeout=timeout)

    def start(self, *args: str, cluster: str = CLUSTER) -> dict[str, Any]:
        out = self.job("start", "--json", "--on", cluster, "-w", self.workdir, *args).stdout
        record: dict[str, Any] = json.loads(out)["job"]
        return record

    def status(self, job_id: str) -> dict[str, Any]:
        out = self.job("status", "--json", job_id).stdout
        record: dict[str, Any] = json.loads(out)["job"]
        return record

    def wait(self, job_id: str, timeout: float = 90) -> tuple[int, dict[str, Any]]:
        done = self.job("wait", job_id, check=False, timeout=timeout)
        return done.returncode, self.status(job_id)

    def log(self) -> str:
        path = self.home / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""


    def start_daemon(self) -> None:
        with open(self.home / "daemon.log", "ab") as log:
            self.daemon = subprocess.Popen(
                [str(BIN / "distsvc"), "daemon", "--log-level", "debug"], env=self.env,
                cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        wait_for(lambda: (self.home / "run" / "distsvc" / "distsvc.sock").exists(), 20,
                 "the daemon's socket")

    def stop_daemon(self) -> None:
        self.daemon.terminate()
        self.daemon.wait(20)
        wait_for(lambda: not (self.home / "run" / "distsvc" / "distsvc.sock").exists(), 20,
                 "the daemon's socket to go")


@pytest.fixture(scope="module")
def user(bed: Bed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[User]:
    _, host, _ = bed
    u = User(tmp_path_factory.mktemp("slurm-user"), host)
    u.start_daemon()
    try:
        yield u
    finally:
        u.stop_daemon()


def sacct(c: container.Container, slurm_id: str) -> list[dict[str, str]]:
    """sacct's rows for the job and its steps, as the cluster's accounting has them."""
    fields = ["JobID", "JobName", "State", "ExitCode"]
    out = c.run(["sacct", "-n", "-P", "-j", slurm_id, "-o", ",".join(fields)]).stdout
    return [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]


def slurm_record(c: container.Container, record: dict[str, Any]) -> dict[str, str]:
    """The job's own sacct row; it carries distsvc's job name for the record's ID."""
    slurm_id = record["placement"]["slurm_id"]
    name = record["placement"]["slurm_name"]
    assert name.startswith("distsvc-") and name.endswith(
        f"-{record['id']}.{record['attempt']}"), name

    def ours() -> list[dict[str, str]]:  # the bed's accounting may hold older jobs' IDs
        return [r for r in sacct(c, slurm_id) if r["JobID"] == slurm_id and r["JobName"] == name]
    wait_for(ours, 30, "the job's accounting record")
    return ours()[-1]


def slurm_state(user: User, job_id: str, state: str, timeout: float = 30,
                reasons: tuple[str, ...] = ()) -> dict[str, Any]:
    """The job's record once it shows Slurm's `state` (with one of `reasons`, if given)."""
    found: dict[str, Any] = {}

    def seen() -> bool:
        found.update(user.status(job_id))
        place = found["placement"]
        return bool(place.get("slurm_state") == state
                    and (not reasons or place.get("slurm_reason") in reasons))
    wait_for(seen, timeout, f"Slurm state {state} {reasons or ''}")
    return found


def test_a_job_runs_through_sbatch_via_the_login_node(bed: Bed, user: User) -> None:
    c, host, _ = bed
    record = user.start("sh", "-c", 'echo out; echo err >&2; echo "$SLURM_JOB_ID"; pwd; '
                        'echo "$DISTSVC_TEST_VAR"', )
    assert record["target"] == "cluster" and record["target_host"] == CLUSTER
    placement = record["placement"]
    assert placement["kind"] == "slurm" and placement["cluster"] == CLUSTER
    slurm_id = placement["slurm_id"]
    assert slurm_id.isdigit()
    code, final = user.wait(record["id"])
    assert code == 0, final
    assert final["state"] == "exited" and final["exit_code"] == 0
    assert final["placement"]["slurm_state"] == "COMPLETED"
    logs = user.job("logs", record["id"])
    assert logs.stdout == f"out\n{slurm_id}\n{host.home}\ncarried\n".encode()
    assert logs.stderr == b"err\n"
    row = slurm_record(c, final)
    assert row["State"] == "COMPLETED" and row["ExitCode"] == "0:0"
    # The daemon made the submission (this client only asked it).
    submitted = [line for line in user.log().splitlines() if "job submitted to Slurm" in line]
    assert any(slurm_id in line for line in submitted), submitted
    # Output on the cluster: the user's own, 0600 in a 0700 directory.
    directory = final["placement"]["dir"]
    listing = c.run(["stat", "-c", "%a %U", directory, f"{directory}/stdout"]).stdout.split("\n")
    assert listing[0] == f"700 {host.user}" and listing[1] == f"600 {host.user}", listing
    table = user.job("list").stdout.decode()
    assert any(line.split()[:2] == [record["id"], "exited"] and CLUSTER in line.split()
               for line in table.splitlines()), table
    text = user.job("status", record["id"]).stdout.decode()
    assert f"slurm: cluster {CLUSTER}, job {slurm_id}" in text and "accounting:" in text, text
    listed = json.loads(user.job("list", "--json", "--host", CLUSTER).stdout)["jobs"]
    assert record["id"] in [j["id"] for j in listed]
    assert json.loads(user.job("list", "--json", "--host", "short").stdout)["jobs"] == []
    for verb, args in (("start", ()), ("status", (record["id"],)), ("list", ()),
                       ("wait", (record["id"],))):
        document = json.loads(user.job(verb, "--json", *args).stdout) if verb != "start" \
            else json.loads(user.job("start", "--json", "--on", CLUSTER, "-w", user.workdir,
                                     "true").stdout)
        assert jsondoc.problems(document, f"job {verb}") == [], (verb, document)


def test_distsvc_run_detach_on_is_job_start_on(bed: Bed, user: User) -> None:
    c, _, _ = bed
    done = user.run("distsvc-run", "--detach", "--on", CLUSTER, "-w", user.workdir, "sh", "-c",
                    'echo "detached $SLURM_JOB_ID"')
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.decode().strip()
    code, final = user.wait(job_id)
    assert code == 0 and final["target"] == "cluster", final
    assert user.job("logs", job_id).stdout == \
        f"detached {final['placement']['slurm_id']}\n".encode()
    assert slurm_record(c, final)["State"] == "COMPLETED"


def test_failed_with_its_exit_code_and_accounting(bed: Bed, user: User) -> None:
    c, _, _ = bed
    record = user.start("sh", "-c", "python3 -c 'x = bytearray(60 << 20); import time; "
                        "time.sleep(2.5)'; exit 3")
    code, final = user.wait(record["id"])
    assert code == 3 and final["state"] == "exited" and final["exit_code"] == 3, final
    assert final["placement"]["slurm_state"] == "FAILED"
    assert slurm_record(c, final)["State"] == "FAILED"

    def accounted() -> bool:
        final.update(user.status(record["id"]))
        return final["memory_peak"] is not None
    wait_for(accounted, 20, "sacct's MaxRSS in status")
    assert final["placement"]["accounting"] == "sacct"
    assert final["memory_peak"] > 50 << 20, final["memory_peak"]
    assert final["cpu_ns"] is not None
    text = user.job("status", record["id"]).stdout.decode()
    assert "accounting: sacct: elapsed 00:00:0" in text, text


def test_stop_cancels_the_whole_job(bed: Bed, user: User) -> None:
    c, _, _ = bed
    record = user.start("sh", "-c", "sleep 300 & sleep 301; echo never")
    running = slurm_state(user, record["id"], "RUNNING")
    assert running["state"] == "running" and "running" in running["placement"]["slurm_state"] \
        .lower()
    wait_for(lambda: "sleep 301" in c.run(["ps", "-eo", "args"]).stdout, 20, "the command")
    stopped = user.job("stop", record["id"])
    assert b"killed by SIGTERM" in stopped.stdout, stopped.stdout
    assert slurm_record(c, user.status(record["id"]))["State"].startswith("CANCELLED")
    wait_for(lambda: "sleep 30" not in c.run(["ps", "-eo", "args"]).stdout, 30,
             "every process of the job to end")
    code, _ = user.wait(record["id"])
    assert code == 143


def test_stop_with_another_signal_reaches_every_step(bed: Bed, user: User) -> None:
    c, _, _ = bed
    record = user.start("sh", "-c", 'trap "echo got INT; exit 7" INT; sleep 299 & wait')
    slurm_state(user, record["id"], "RUNNING")
    wait_for(lambda: "sleep 299" in c.run(["ps", "-eo", "args"]).stdout, 20,
             "the command (its trap set before)")
    stopped = user.job("stop", "--signal", "INT", "--grace", "20", record["id"])
    assert b"exited 7" in stopped.stdout, stopped.stdout
    assert user.job("logs", record["id"]).stdout == b"got INT\n"


def gated(user: User, gate: str, then: str) -> tuple[str, str, str]:
    """A command that waits for the file `gate` in the job's directory, then runs `then`:
    a job that cannot end before the test lets it (no window of time relied on)."""
    path = f"{user.workdir}/{gate}"
    return "sh", "-c", f"while [ ! -e {path} ]; do sleep 0.1; done; rm -f {path}; {then}"


def open_gate(c: container.Container, user: User, gate: str) -> None:
    c.run_as_user(["touch", f"{user.workdir}/{gate}"])


def test_after_on_the_cluster_is_a_slurm_dependency(bed: Bed, user: User) -> None:
    c, _, _ = bed
    first = user.start(*gated(user, "gate-first", "true"))
    second = user.start("--after", first["id"], "sh", "-c", "echo second")
    # Submitted at once: Slurm holds it for the first one.
    assert second["state"] == "running" and second["placement"]["slurm_id"].isdigit()
    slurm_state(user, second["id"], "PENDING", reasons=("Dependency",))
    assert "pending (Dependency)" in user.job("status", second["id"]).stdout.decode()
    dependency = c.run(["scontrol", "show", "job", "-o", second["placement"]["slurm_id"]]).stdout
    assert f"afterok:{first['placement']['slurm_id']}" in dependency, dependency
    open_gate(c, user, "gate-first")
    assert user.wait(second["id"])[0] == 0
    assert user.job("logs", second["id"]).stdout == b"second\n"
    # A dependency that fails: Slurm's DependencyNeverSatisfied is our dependency-failed,
    # and the job is cancelled there (it would stay pending for ever).
    failing = user.start(*gated(user, "gate-failing", "exit 1"))
    after = user.start("--after", failing["id"], "sh", "-c", "echo never")
    slurm_state(user, after["id"], "PENDING", reasons=("Dependency",))
    open_gate(c, user, "gate-failing")
    code, final = user.wait(after["id"])
    assert code == 125 and final["state"] == "dependency-failed", final
    assert "DependencyNeverSatisfied" in final["reason"]
    wait_for(lambda: after["placement"]["slurm_id"] not in c.run(
        ["squeue", "-h", "-o", "%i"]).stdout, 20, "the job cancelled in Slurm")


def test_logs_follow_from_two_clients_losslessly(bed: Bed, user: User) -> None:
    record = user.start("sh", "-c", "head -c 3000000 /dev/urandom > blob.$$; cat blob.$$; "
                        "sleep 1; cat blob.$$; sha256sum blob.$$ >&2; rm blob.$$")
    outs: list[subprocess.CompletedProcess[bytes]] = []

    def follow() -> None:
        outs.append(user.run("distsvc", "job", "logs", "--follow", "--stdout", record["id"],
                             timeout=120))
    threads = [threading.Thread(target=follow) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    digest = user.job("logs", "--stderr", record["id"]).stderr.split()[0].decode()
    for out in outs:
        assert out.returncode == 0, out.stderr
        assert len(out.stdout) == 6_000_000
        half = out.stdout[:3_000_000]
        assert out.stdout == half * 2
        assert hashlib.sha256(half).hexdigest() == digest


def test_remove_cleans_the_clusters_directory_and_pause_is_refused(bed: Bed,
                                                                    user: User) -> None:
    c, _, _ = bed
    record = user.start("sleep", "30")
    paused = user.job("pause", record["id"], check=False)
    assert paused.returncode == 4 and len(paused.stderr.splitlines()) == 1, paused.stderr
    assert b"only its operators suspend" in paused.stderr
    user.job("stop", record["id"])
    directory = user.status(record["id"])["placement"]["dir"]
    assert c.run(["test", "-d", directory], check=False).returncode == 0
    user.job("remove", record["id"])
    wait_for(lambda: c.run(["test", "-e", directory], check=False).returncode != 0, 20,
             "the job's directory on the cluster to go")
    assert user.job("status", record["id"], check=False).returncode == 5


def test_refusals_are_one_line_with_slurms_reason(bed: Bed, user: User) -> None:
    def refused(*args: str, cluster: str) -> subprocess.CompletedProcess[bytes]:
        done = user.job("start", "--on", cluster, "-w", user.workdir, *args, check=False)
        assert len(done.stderr.splitlines()) == 1, done.stderr
        return done

    partition = refused("true", cluster="nopart")
    assert partition.returncode == 4 and b"invalid partition" in partition.stderr.lower(), \
        partition.stderr
    assert b"sinfo -s" in partition.stderr
    account = refused("true", cluster="noacct")
    assert account.returncode == 4 and b"invalid account" in account.stderr.lower(), \
        account.stderr
    assert b"sacctmgr show assoc" in account.stderr
    beyond = refused("--timeout", "5m", "true", cluster="short")
    assert beyond.returncode == 4 and b"time limit" in beyond.stderr.lower(), beyond.stderr
    tasks = refused("--tasks", "5", "true", cluster=CLUSTER)
    assert tasks.returncode == 4 and b"--tasks" in tasks.stderr, tasks.stderr
    missing = refused("no-such-command-x", cluster=CLUSTER)
    assert missing.returncode == 127 and b"command not found" in missing.stderr
    nodir = user.job("start", "--on", CLUSTER, "-w", "/no/such/dir", "true", check=False)
    assert nodir.returncode == 4 and b"no such directory" in nodir.stderr, nodir.stderr
    away = refused("true", cluster="away")
    assert away.returncode == 255 and b"cluster away" in away.stderr, away.stderr
    unknown = refused("true", cluster="nowhere")
    assert unknown.returncode == 2 and b"no such cluster" in unknown.stderr


def test_pending_while_the_node_is_full(bed: Bed, user: User) -> None:
    _, _, cluster = bed
    hog = user.start("--cpu", f"{cluster.cpus * 100}%", "sleep", "300")
    try:
        slurm_state(user, hog["id"], "RUNNING")
        queued = user.start("sleep", "1")
        pending = slurm_state(user, queued["id"], "PENDING",
                              reasons=("Resources", "Priority"))
        said = user.job("status", queued["id"]).stdout.decode()
        assert f"pending ({pending['placement']['slurm_reason']})" in said, said
    finally:
        user.job("stop", hog["id"], check=False)
    assert user.wait(queued["id"])[0] == 0


def test_node_fail(bed: Bed, user: User) -> None:
    c, _, cluster = bed
    record = user.start("sleep", "300")
    slurm_state(user, record["id"], "RUNNING")
    c.run(["scontrol", "update", f"nodename={cluster.node}", "state=down", "reason=test"])
    try:
        code, final = user.wait(record["id"], timeout=120)
    finally:
        # ReturnToService=2 may have put it back already (then "resume" is refused).
        c.run(["scontrol", "update", f"nodename={cluster.node}", "state=resume"], check=False)
    assert final["placement"]["slurm_state"] == "NODE_FAIL", final
    assert final["state"] == "failed" and "NODE_FAIL" in final["reason"]
    assert code == 126
    wait_for(lambda: c.run(["sinfo", "-h", "-n", cluster.node, "-o", "%T"]).stdout.strip()
             == "idle", 180, "the node back")


def test_out_of_memory(bed: Bed, user: User) -> None:
    """The bed's OverMemoryKill (jobacct_gather; no cgroup plugin in the container): a step
    beyond its --mem is killed at the next sample. Slurm 22.05 records that as FAILED
    (JobLaunchFailure) by signal 9, not OUT_OF_MEMORY (its cgroup plugin's OOM events only):
    slurmstepd's line in the job's stderr makes it our "oom"."""
    c, _, _ = bed
    record = user.start("--memory", "50M", "python3", "-c",
                        "import time; x = b'x' * (300 << 20); time.sleep(30)")
    code, final = user.wait(record["id"])
    assert code == 137 and final["state"] == "oom", final
    assert "OverMemoryKill" in final["reason"]
    assert "out of memory (limit 50M)" in user.job("status", record["id"]).stdout.decode()
    assert b"Exceeded job memory limit" in user.job("logs", record["id"]).stderr
    row = slurm_record(c, final)
    assert (row["State"], row["ExitCode"]) == ("FAILED", "0:9"), row


@pytest.mark.timeout(240)
def test_timeout(bed: Bed, user: User) -> None:
    record = user.start("--timeout", "1m", "sleep", "300")
    code, final = user.wait(record["id"], timeout=200)
    assert code == 124 and final["state"] == "timeout", final
    assert final["placement"]["slurm_state"] == "TIMEOUT"


def test_on_this_machine_through_a_daemon_there(bed: Bed) -> None:
    """Slurm's commands on the daemon's own machine: a user of the container, its daemon
    there, a cluster without `login`."""
    c, host, _ = bed
    home = host.home
    c.write_file(f"{home}/.config/distsvc/config.toml", f'[[clusters]]\nname = "{CLUSTER}"\n',
                 owner=c.user)
    daemon = c.popen_as_user(["sh", "-c", "exec distsvc daemon --log-level debug "
                              "2> $HOME/here-daemon.log"], env={"DISTSVC_DAEMON": "required"})
    try:
        wait_for(lambda: c.run_as_user(["test", "-S", f"/run/user/{c.uid}/distsvc/distsvc.sock"],
                                       check=False).returncode == 0, 30, "the daemon's socket")
        started = helpers.job(c, "start", "--json", "--on", CLUSTER, "sh", "-c",
                              'echo "here $SLURM_JOB_ID"; exit 5')
        record = json.loads(started.stdout)["job"]
        slurm_id = record["placement"]["slurm_id"]
        waited = helpers.job(c, "wait", record["id"], check=False, timeout=90)
        assert waited.returncode == 5, waited.stderr
        final = job_status(c, record["id"])
        assert final["state"] == "exited" and final["exit_code"] == 5
        assert final["placement"]["slurm_state"] == "FAILED"
        assert helpers.job(c, "logs", record["id"]).stdout == f"here {slurm_id}\n"
        assert slurm_record(c, final)["State"] == "FAILED"
        assert "job submitted to Slurm" in c.read_file(f"{home}/here-daemon.log")
    finally:
        daemon.terminate()
        daemon.wait(20)


def test_a_new_daemon_takes_up_the_clusters_jobs(bed: Bed, user: User) -> None:
    """Slurm keeps the job while no daemon runs; the next daemon finds it by its record and
    mirrors its output from byte 0, and learns how it ended."""
    c, _, _ = bed
    record = user.start("sh", "-c", "echo before; sleep 6; echo after; exit 4")
    slurm_state(user, record["id"], "RUNNING")
    user.stop_daemon()
    try:
        wait_for(lambda: record["placement"]["slurm_id"] not in c.run(
            ["squeue", "-h", "-o", "%i"]).stdout, 30, "the job to end in Slurm")
    finally:
        user.start_daemon()
    code, final = user.wait(record["id"])
    assert code == 4 and final["state"] == "exited" and final["exit_code"] == 4, final
    assert user.job("logs", record["id"]).stdout == b"before\nafter\n"


def test_retries_submit_again(bed: Bed, user: User) -> None:
    c, _, _ = bed
    record = user.start("--retries", "1", "sh", "-c", 'echo "try $SLURM_JOB_ID"; exit 3')
    code, final = user.wait(record["id"])
    assert code == 3 and final["attempt"] == 2, final
    first = final["attempts"][0]["placement"]
    assert first["kind"] == "slurm" and first["slurm_id"] != final["placement"]["slurm_id"]
    assert user.job("logs", "--attempt", "1", record["id"]).stdout == \
        f"try {first['slurm_id']}\n".encode()
    assert user.job("logs", record["id"]).stdout == \
        f"try {final['placement']['slurm_id']}\n".encode()
    assert final["placement"]["dir"].endswith(f"/{record['id']}.2")
    user.job("remove", record["id"])
    for place in (first, final["placement"]):
        wait_for(lambda p=place: c.run(["test", "-e", p["dir"]], check=False).returncode != 0,
                 20, "each attempt's directory on the cluster to go")


def test_a_cluster_without_accounting(bed: Bed, user: User) -> None:
    """Last (it restarts the cluster without accounting, then with it again): status says
    that the cluster keeps no accounting, and shows scontrol's run time."""
    c, _, cluster = bed
    conf = c.read_file("/etc/slurm/slurm.conf")
    lines = [line for line in conf.splitlines() if not line.startswith(
        ("AccountingStorage", "JobAcctGather"))]
    c.write_file("/etc/slurm/slurm.conf", "\n".join(
        [*lines, "AccountingStorageType=accounting_storage/none"]) + "\n")
    try:
        c.run(["systemctl", "restart", "slurmctld.service", "slurmd.service"], timeout=60)
        wait_for(lambda: c.run(["sinfo", "-h", "-n", cluster.node, "-o", "%T"],
                               check=False).stdout.strip() == "idle", 60, "the node")
        assert "disabled" in c.run(["sacct", "-n"], check=False).stderr + c.run(
            ["sacct", "-n"], check=False).stdout
        record = user.start("sh", "-c", "sleep 1; echo done")
        code, final = user.wait(record["id"])
        assert code == 0 and final["state"] == "exited", final
        assert final["placement"]["accounting"].startswith("none: "), final["placement"]
        text = user.job("status", record["id"]).stdout.decode()
        assert "accounting: none on this cluster (" in text and "disabled" in text, text
        assert "scontrol's run time 00:00:0" in text, text
    finally:
        c.write_file("/etc/slurm/slurm.conf", conf)
        c.run(["systemctl", "restart", "slurmctld.service", "slurmd.service"], timeout=60)
        wait_for(lambda: c.run(["sinfo", "-h", "-n", cluster.node, "-o", "%T"],
                               check=False).stdout.strip() == "idle", 60, "the node")


def test_a_launch_failure_says_where_the_output_goes(bed: Bed, user: User) -> None:
    """Slurm cannot open the job's output on the node (as with an `output` the nodes do not
    share): FAILED JobLaunchFailure is "failed" with where the output goes, not a signal.
    The node is drained while the job is submitted, so it pends (reason read whole), and its
    output is made impossible to create before it may run."""
    c, _, cluster = bed
    c.run(["scontrol", "update", f"nodename={cluster.node}", "state=drain", "reason=test"])
    try:
        record = user.start("echo", "never")
        unavailable = f"ReqNodeNotAvail, UnavailableNodes:{cluster.node}"  # spaces in it
        pending = slurm_state(user, record["id"], "PENDING", reasons=(unavailable,))
        assert f"pending ({unavailable})" in user.job("status", record["id"]).stdout.decode()
        d = pending["placement"]["dir"]
        c.run(["sh", "-c", f"rm -f {d}/stdout {d}/stderr && chmod 500 {d}"])
    finally:
        c.run(["scontrol", "update", f"nodename={cluster.node}", "state=resume"])
    code, final = user.wait(record["id"])
    c.run(["chmod", "700", d])
    assert final["state"] == "failed", final
    assert final["reason"].startswith(f"Slurm could not launch it on {cluster.node} "
                                      "(JobLaunchFailure"), final
    assert f"its output directory {d.rsplit('/', 2)[0]} must be on the nodes (the `output` " \
        f"setting of cluster {CLUSTER})" in final["reason"], final
    assert code == 126 and slurm_record(c, final)["State"] == "FAILED"


def test_slurmctld_down_is_not_the_job_gone(bed: Bed, user: User) -> None:
    """slurmctld stopped while a job runs: its status says so and stays unfinished, a stop
    fails with scancel's line (255) instead of saying yes; slurmctld back, the job ends as
    it does."""
    c, _, _ = bed
    record = user.start(*gated(user, "gate-ctld", "echo done"))
    slurm_state(user, record["id"], "RUNNING")
    c.run(["systemctl", "stop", "slurmctld.service"], timeout=60)
    try:
        wait_for(lambda: "slurmctld not answering" in user.job(
            "status", record["id"]).stdout.decode(), 30, "the status to say slurmctld is down")
        status = user.status(record["id"])
        assert status["state"] == "running", status
        assert "Unable to contact slurm controller" in status["placement"]["down_reason"]
        stopped = user.job("stop", record["id"], check=False)
        assert stopped.returncode == 255, stopped
        assert b"scancel" in stopped.stderr and b"stopped" not in stopped.stdout, stopped
    finally:
        c.run(["systemctl", "start", "slurmctld.service"], timeout=60)
    wait_for(lambda: "down_reason" not in user.status(record["id"])["placement"], 60,
             "the watcher to see slurmctld back")
    open_gate(c, user, "gate-ctld")
    code, final = user.wait(record["id"])
    assert (code, final["state"]) == (0, "exited"), final
    assert user.job("logs", record["id"]).stdout == b"done\n"
    assert slurm_record(c, final)["State"] == "COMPLETED"
