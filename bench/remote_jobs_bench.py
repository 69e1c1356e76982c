"""What does a job on an SSH host cost, how close does the queue come to its ideal, and how
fast is a remote job's output followed? (issue 8)

Against the OpenSSH servers of tests/sshbed.py (hosts without a systemd user manager, so
jobs run under the setsid supervisor of jobs/remote.py), at OpenSSH's defaults, through a
daemon started for the bench user as tests/conftest.py starts one (`distsvc daemon
--log-level debug`, DISTSVC_DAEMON=required for the clients, so nothing falls back
in-process). Where tests/container.py can give an sshd inside the booted systemd container
(`booted_with_sshd`), that host ("sd", a real user manager: jobs go through
`systemd-run --user`) is measured too; otherwise the report says it is missing.

1. Placing and starting a job, interleaved round by round (--rounds each, after a warm-up
   that probes every host): `distsvc job start --host H true` (the client process
   included), the same `job_start` request sent from this warm process (the daemon's
   share), `distsvc job start --best true`, against `ssh H true` fresh and through a
   ControlMaster, and `ssh sd systemd-run --user true`; then start and wait (`job start`
   then `job wait`, two client processes, and both requests from this process) against
   `ssh H true`. Then where a start's time goes: one `sh -s` session on a warm paramiko
   connection of distsvc's own SSH adapter running nothing, the start script's shape, and
   the daemon's log lines of one start.
2. The queue: --jobs `sleep 1` jobs submitted at once by --submitters parallel submitters
   (each a loop of `distsvc job start` processes) to 3 hosts with `slots = 2` each; wall
   time from the first submit until `distsvc job wait` on all of them returns, against
   the ideal ceil(jobs / 6) s; the daemon's CPU time (/proc/PID/stat) and RSS before and
   after; every job must have exited 0 and no host may have run more than 2 at once, from
   the supervisors' own files on the host (mtime of `pid`: the command started; of
   `status`: it ended), the records' started/ended and `distsvc hosts --json` sampled
   every second.
3. Following a remote job's output: `distsvc job logs --follow --stdout` of a job that
   `cat`s a --follow-mib MiB file of random bytes on the host (from the job's start until
   the follower's end of file, checked byte for byte by SHA-256), next to `ssh H cat` of
   the same file; and what one look of the host's watcher costs at its largest budget (one
   session fetching LOOK_MOST bytes; a look starts at LOOK_MAX and doubles while quick).

Usage (as root, from the repository root; a few minutes):

    .venv/bin/python bench/remote_jobs_bench.py [--rounds N] [--jobs N] [--submitters N]
                                                [--follow-mib N] [--follow-runs N]
                                                [--skip PART]... [--no-docs]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from common import (
    DISTSVC,
    DOCS,
    MIB,
    PYTHON,
    ROOT,
    TMPFS,
    client_home,
    conditions,
    control_master,
    cpu_seconds,
    kib,
    machine,
    median,
    ms,
    ours,
    p99,
    preamble,
    proc_status,
    publish,
    row,
    ssh_command,
    ssh_env,
    sshbed,
    stray_sshd,
    terminate,
    time_call,
)
from daemon_bench import load_now

import distsvc.actions.jobs  # the venv has distsvc (the tests/ path is set by common)
import distsvc.jobs.remote
import distsvc.jobs.store

HEADING = "## Jobs on hosts and the queue (issue 8)"
PARTS = ("start", "queue", "follow")
WORKDIR = "/"  # every job's directory: it exists on every host, the container's too
ROOT_DIR = Path(WORKDIR)
SLOTS = 2
SYSTEMD_HOST = "sd"


# --- the setting -----------------------------------------------------------------------------


@dataclasses.dataclass
class Systemd:
    """The container's sshd as a host with a systemd user manager, or why there is none."""

    host: Any = None  # container.SshHost
    missing: str | None = None


@dataclasses.dataclass
class Setting:
    bed: sshbed.Bed
    tmp: Path
    runtime: Path
    args: argparse.Namespace
    systemd: Systemd

    def home(self, name: str, hosts: Sequence[sshbed.Host], slots: int | None = None,
             with_systemd: bool = False) -> dict[str, str]:
        """A client home `name` whose config names `hosts` (and the container's host), every
        host with `slots`, measurements kept an hour, and jobs kept whatever their count."""
        env = client_home(self.bed, self.tmp / name, daemon=True, hosts=hosts,
                          runtime=self.runtime / name)
        env["DISTSVC_DAEMON"] = "required"
        tables = [{"name": h.name, "address": h.address, "port": h.port, "user": self.bed.user}
                  for h in hosts]
        sd = self.systemd.host
        if with_systemd and sd is not None:
            tables.append({"name": SYSTEMD_HOST, "address": sd.address, "port": sd.port,
                           "user": sd.user})
            with open(Path(env["HOME"]) / ".ssh" / "known_hosts", "a") as known:
                known.write(sd.known_hosts_line + "\n")
        lines = ["max_age = 3600"]
        for table in tables:
            lines.append("[[hosts]]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
            if slots is not None:
                lines.append(f"slots = {slots}")
        lines += ["[jobs]", "keep = 100000"]
        path = Path(env["XDG_CONFIG_HOME"]) / "distsvc" / "config.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        return env


@contextlib.contextmanager
def daemon(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`distsvc daemon --log-level debug` as tests/conftest.py's start_daemon starts it."""
    with open(log, "ab") as err:
        process = subprocess.Popen([str(DISTSVC), "daemon", "--log-level", "debug"], env=env,
                                   cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=err)
    socket = Path(env["XDG_RUNTIME_DIR"]) / "distsvc" / "distsvc.sock"
    deadline = time.monotonic() + 30
    while not socket.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the daemon did not start: {log.read_text()[-2000:]}")
        time.sleep(0.02)
    try:
        yield process
    finally:
        terminate(process, 30)


def cli(env: dict[str, str], *args: str, timeout: float = 120
            ) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    """(seconds, result) of one `distsvc ARGS` process; it must exit 0."""
    started = time.perf_counter()
    done = subprocess.run([str(DISTSVC), *args], env=env, cwd=WORKDIR, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=timeout)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"distsvc {shlex.join(args)} exited {done.returncode}: "
                           f"{done.stderr.decode(errors='replace').strip()}")
    return elapsed, done


def start_message(env: dict[str, str], argv: Sequence[str], host: str | None) -> dict[str, Any]:
    """The `job_start` request `distsvc job start [--host H] ARGV` sends (commands/job.py)."""
    target: dict[str, Any] = {"target": "host", "host": host} if host else {"target": "best"}
    return {"type": "job_start", "argv": list(argv), "cwd": WORKDIR, "env": dict(env),
            "name": None, "limits": {}, "isolate": None, "best_effort": False, **target}


def request(env: dict[str, str], message: dict[str, Any]) -> dict[str, Any]:
    return distsvc.actions.jobs.request(message, env, timeout=120)


def started_id(done: subprocess.CompletedProcess[bytes]) -> str:
    return done.stdout.decode().strip()


# --- 1. placing and starting -----------------------------------------------------------------


SESSION_SCRIPT = """if True:
    # With a client's environment: a warm connection of distsvc's SSH adapter to the host,
    # timing `exec /bin/sh -s` sessions as the daemon's runner opens them (book.runner).
    import json, os, sys, time
    import distsvc.adapters.ssh, distsvc.config
    config = distsvc.config.load(None, os.environ)
    host = next(h for h in config.hosts if h.name == sys.argv[1])
    runs, path, fetch = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    pool = distsvc.adapters.ssh.Pool()
    sessions = pool.sessions(host, config.host_key_policy, 10.0)
    sessions.run("true")
    out = {}
    def each(name, script):
        values = []
        for _ in range(runs):
            started = time.perf_counter()
            status, got = sessions.run("exec /bin/sh -s", script.encode(), 60.0)
            values.append(time.perf_counter() - started)
            assert status == 0, (name, status, got[-200:])
        out[name] = values
        return got
    each("empty script", "true")
    each("one sleep 0.05", "sleep 0.05")
    # The supervisor's start handshake (jobs/remote.start_script): a setsid supervisor
    # starts the command in a session of its own and writes its PID to a file, which the
    # start script polls for; and the same handshake over a pipe, polling nothing.
    supervisor = ("setsid /bin/sh -c 'setsid /bin/sh -c \\"exit 0\\" </dev/null >/dev/null "
                  "2>&1 & c=$!; echo $c > \\"$1/pid.new\\" && mv \\"$1/pid.new\\" \\"$1/pid\\"; "
                  "wait $c' sh \\"$D\\" </dev/null >/dev/null 2>&1 &\\n")
    for step in ("0.05", "0.005"):
        each(f"supervisor start, PID file polled every {step} s"
             + (" (as start_script does)" if step == "0.005" else ""),
             'D=$(mktemp -d)\\n' + supervisor + 'i=0; while [ ! -s "$D/pid" ] && '
             f'[ $i -lt 1000 ]; do sleep {step}; i=$((i + 1)); done; rm -rf "$D"')
    each("supervisor start, PID read from a pipe",
         "p=$(setsid /bin/sh -c 'setsid /bin/sh -c \\"exit 0\\" </dev/null >/dev/null 2>&1 & "
         "echo $!; exec >/dev/null; wait' </dev/null); [ -n \\"$p\\" ]")
    if fetch:
        got = each("fetch", f"tail -c +1 {path} | head -c {fetch}")
        assert len(got) == fetch, len(got)
    pool.close_all()
    print(json.dumps(out))
"""


def sessions_on(env: dict[str, str], host: str, runs: int, path: str = "", fetch: int = 0
                ) -> dict[str, list[float]]:
    done = subprocess.run([str(PYTHON), "-c", SESSION_SCRIPT, host, str(runs), path,
                           str(fetch)], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"session timing failed: {done.stderr[-2000:]}")
    result: dict[str, list[float]] = json.loads(done.stdout)
    return result



def log_excerpt(log: Path, job_id: str) -> list[str]:
    """The daemon's log lines naming job `job_id`."""
    marker = re.compile(rf"\bjob=['\"]?{job_id}['\"]?(\s|$)")
    return [line.strip() for line in log.read_text(errors="replace").splitlines()
            if marker.search(line)]


def part_start(s: Setting) -> dict[str, Any]:
    bed, rounds = s.bed, s.args.rounds
    h1 = bed.hosts[0]
    env = s.home("start", bed.hosts[:3], with_systemd=True)
    plain = ssh_env(s.tmp / "ssh")
    ssh = ssh_command(bed, h1, s.tmp / "ssh")
    log = s.tmp / "start-daemon.log"
    sd = s.systemd.host
    with daemon(env, log) as process, control_master(ssh, plain, s.tmp / "cm") as muxed:
        hosts = [h.name for h in bed.hosts[:3]] + ([SYSTEMD_HOST] if sd is not None else [])
        for name in hosts:  # warm: each host probed for jobs, a pooled connection open
            _, done = cli(env, "job", "start", "--host", name, "true")
            cli(env, "job", "wait", started_id(done))
        variants: list[tuple[str, str, Callable[[], float]]] = [
            ("ssh, fresh connection", "ssh H true",
             lambda: time_call([*ssh, "true"], plain, ROOT_DIR)),
            ("ssh, ControlMaster", "ssh -o ControlPath=CM H true",
             lambda: time_call([*muxed, "true"], plain, ROOT_DIR)),
            ("job start, a host", f"distsvc job start --host {h1.name} true",
             lambda: cli(env, "job", "start", "--host", h1.name, "true")[0]),
            ("job start, best host", "distsvc job start --best true",
             lambda: cli(env, "job", "start", "--best", "true")[0]),
            ("`job_start` request alone (the daemon's share)",
             f"job_start request for --host {h1.name} true from a warm process",
             lambda: timed_request(env, start_message(env, ["true"], h1.name))),
            ("for comparison: a `job_status` request", "job_status request from a warm "
             "process", lambda: timed_request(env, {"type": "job_status", "id": "1"})),
            ("start and wait: `job start` + `job wait`",
             f"distsvc job start --host {h1.name} true; distsvc job wait ID",
             lambda: start_and_wait(env, h1.name)),
            ("start and wait: the two requests alone",
             f"job_start + job_wait requests for --host {h1.name} true",
             lambda: start_and_wait_requests(env, h1.name)),
        ]
        if sd is not None:
            sd_ssh = sd.ssh_argv("systemd-run --user --quiet true", key=bed.client_key)
            variants += [
                ("ssh sd systemd-run --user true (fresh)", "ssh sd systemd-run --user true",
                 lambda: time_call(sd_ssh, plain, ROOT_DIR)),
                ("job start, the systemd host", f"distsvc job start --host {SYSTEMD_HOST} true",
                 lambda: cli(env, "job", "start", "--host", SYSTEMD_HOST, "true")[0]),
                ("job start, the systemd host, no isolation",
                 f"distsvc job start --host {SYSTEMD_HOST} --isolate none true",
                 lambda: cli(env, "job", "start", "--host", SYSTEMD_HOST, "--isolate", "none",
                             "true")[0]),
                ("`job_start` request alone, the systemd host",
                 f"job_start request for --host {SYSTEMD_HOST} true",
                 lambda: timed_request(env, start_message(env, ["true"], SYSTEMD_HOST))),
            ]
        times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        for _ in range(rounds):
            for name, _, call in variants:
                times[name].append(call())
        shown = {name: text for name, text, _ in variants}
        # One more start, for the daemon's log of it.
        _, done = cli(env, "job", "start", "--host", h1.name, "true")
        one = started_id(done)
        cli(env, "job", "wait", one)
        record = json.loads(cli(env, "job", "status", "--json", one)[1].stdout)["job"]
        rss = kib(proc_status(process.pid)["VmRSS"])
        jobs = json.loads(cli(env, "job", "list", "--json")[1].stdout)["jobs"]
        cli(env, "job", "wait", *(j["id"] for j in jobs), timeout=300)  # the last ones
        jobs = json.loads(cli(env, "job", "list", "--json")[1].stdout)["jobs"]
    bad = [j for j in jobs if j["state"] != "exited" or j["exit_code"] != 0]
    if bad:
        raise RuntimeError(f"{len(bad)} jobs did not exit 0: {bad[0]}")
    pieces = sessions_on(env, h1.name, rounds)
    if sd is not None:
        pieces.update({f"{k} (sd)": v for k, v in
                       sessions_on(env, SYSTEMD_HOST, rounds).items()})
    modes = sorted({(j["placement"]["host"], j["placement"]["mode"]) for j in jobs})
    return {"times": times, "shown": shown, "pieces": pieces, "log": log_excerpt(log, one),
            "record": {k: record.get(k) for k in ("created", "started", "ended")},
            "jobs": len(jobs), "modes": modes, "daemon_rss": rss}


def timed_request(env: dict[str, str], message: dict[str, Any]) -> float:
    started = time.perf_counter()
    request(env, message)
    return time.perf_counter() - started


def start_and_wait(env: dict[str, str], host: str) -> float:
    started = time.perf_counter()
    _, done = cli(env, "job", "start", "--host", host, "true")
    cli(env, "job", "wait", started_id(done))
    return time.perf_counter() - started


def start_and_wait_requests(env: dict[str, str], host: str) -> float:
    started = time.perf_counter()
    answer = request(env, start_message(env, ["true"], host))
    job_id = answer["jobs"][0]["id"]
    waiter = distsvc.actions.jobs.Waiter([job_id], env)
    while waiter.poll(60.0) is None:
        pass
    return time.perf_counter() - started


# --- 2. the queue ----------------------------------------------------------------------------


def host_interval(bed: sshbed.Bed, record: dict[str, Any]) -> tuple[float, float]:
    """When the command started and ended on its host: the supervisor's `pid` file is
    written once the command is started, its `status` file once it has ended."""
    directory = Path(record["placement"]["dir"])
    return (directory / "pid").stat().st_mtime, (directory / "status").stat().st_mtime


def most_at_once(intervals: Sequence[tuple[float, float]]) -> int:
    """The largest number of intervals overlapping at one moment (an end before a start at
    the same instant)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def part_queue(s: Setting) -> dict[str, Any]:
    bed, count, submitters = s.bed, s.args.jobs, s.args.submitters
    hosts = bed.hosts[:3]
    env = s.home("queue", hosts, slots=SLOTS)
    log = s.tmp / "queue-daemon.log"
    with daemon(env, log) as process:
        for host in hosts:  # warm: every host probed for jobs, its connection pooled
            _, done = cli(env, "job", "start", "--host", host.name, "true")
            cli(env, "job", "wait", started_id(done))
        time.sleep(1.0)
        before = proc_status(process.pid)
        cpu_before = cpu_seconds(process.pid)

        ids: list[str] = []
        submit_times: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()

        def submit(n: int) -> None:
            for _ in range(n):
                try:
                    took, done = cli(env, "job", "start", "sleep", "1")
                except Exception as error:  # the main thread reports it
                    with lock:
                        errors.append(str(error))
                    return
                with lock:
                    ids.append(started_id(done))
                    submit_times.append(took)

        samples: list[dict[str, list[str]]] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(1.0):
                try:
                    rows = json.loads(cli(env, "hosts", "--json")[1].stdout)["hosts"]
                except Exception as error:
                    with lock:
                        errors.append(f"hosts --json: {error}")
                    return
                samples.append({r["host"]: r.get("jobs", []) for r in rows})

        shares = [count // submitters + (i < count % submitters) for i in range(submitters)]
        threads = [threading.Thread(target=submit, args=(n,)) for n in shares]
        sampler = threading.Thread(target=sample)
        first_submit = time.time()
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        sampler.start()
        for thread in threads:
            thread.join()
        submitted = time.perf_counter() - started
        if errors:
            sampling.set()
            sampler.join()
            raise RuntimeError(f"{len(errors)} submits failed: {errors[0]}")
        cli(env, "job", "wait", *ids, timeout=600)
        wall = time.perf_counter() - started
        cpu = cpu_seconds(process.pid) - cpu_before
        sampling.set()
        sampler.join()
        if errors:
            raise RuntimeError(f"sampling the hosts failed: {errors[0]}")
        after = proc_status(process.pid)
        time.sleep(5.0)
        settled = proc_status(process.pid)
        listed = json.loads(cli(env, "job", "list", "--json")[1].stdout)["jobs"]
    records = [j for j in listed if j["id"] in set(ids)]
    bad = [j for j in records if j["state"] != "exited" or j["exit_code"] != 0]
    by_host: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_host.setdefault(record["placement"]["host"], []).append(record)
    on_host = {h: [host_interval(bed, r) for r in rs] for h, rs in by_host.items()}
    in_records = {h: [(r["started"], r["ended"]) for r in rs] for h, rs in by_host.items()}
    runs = [b - a for spans in on_host.values() for a, b in spans]
    last_end = max(b for spans in on_host.values() for _, b in spans)
    first_start = min(a for spans in on_host.values() for a, _ in spans)
    busy = sum(runs)
    return {
        "count": count, "submitters": submitters, "wall": wall, "submitted": submitted,
        "ideal": math.ceil(count / (SLOTS * len(hosts))) * 1.0,
        "first_start_after": first_start - first_submit, "last_end_after": last_end - first_submit,
        "submit_times": submit_times, "records": len(records), "bad": len(bad),
        "bad_example": bad[:1], "per_host": {h: len(rs) for h, rs in sorted(by_host.items())},
        "most_on_host": {h: most_at_once(spans) for h, spans in sorted(on_host.items())},
        "most_in_records": {h: most_at_once(spans) for h, spans in sorted(in_records.items())},
        "most_sampled": max((len(jobs) for row in samples for jobs in row.values()), default=0),
        "samples": len(samples), "runs": runs,
        "slot_use": busy / (SLOTS * len(hosts) * (last_end - first_start)),
        "gaps": slot_gaps(on_host), "cpu": cpu,
        "rss": [kib(before["VmRSS"]), kib(after["VmRSS"]), kib(settled["VmRSS"])],
        "threads": [before["Threads"], after["Threads"], settled["Threads"]],
    }


def slot_gaps(on_host: dict[str, list[tuple[float, float]]]) -> list[float]:
    """Seconds each freed slot of a host waited for its next command: past the host's first
    SLOTS starts, the n-th start took the slot freed n-th (the earliest end not taken yet,
    which must be before it)."""
    gaps = []
    for spans in on_host.values():
        ends = sorted(b for _, b in spans)
        taken = 0
        for start, _ in sorted(spans)[SLOTS:]:
            if taken < len(ends) and ends[taken] <= start:
                gaps.append(start - ends[taken])
                taken += 1
    return gaps


# --- 3. following output ---------------------------------------------------------------------


def read_all(argv: Sequence[str], env: dict[str, str], started: float,
             size: int, digest: str) -> float:
    """Seconds from `started` until argv's stdout ended, which must be the file's bytes."""
    buffer = bytearray(MIB)
    received = 0
    hashed = hashlib.sha256()
    with subprocess.Popen(argv, env=env, cwd=WORKDIR, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0) as process:
        assert process.stdout is not None and process.stderr is not None
        while count := process.stdout.readinto(buffer):
            received += count
            hashed.update(memoryview(buffer)[:count])
        status = process.wait(timeout=600)
        elapsed = time.perf_counter() - started
        error = process.stderr.read().decode(errors="replace").strip()
    if status != 0 or received != size or hashed.hexdigest() != digest:
        raise RuntimeError(f"{shlex.join(argv)}: exit {status}, {received} bytes of {size}, "
                           f"{'same' if hashed.hexdigest() == digest else 'other'} bytes: "
                           f"{error}")
    return elapsed


def part_follow(s: Setting) -> dict[str, Any]:
    bed, h1 = s.bed, s.bed.hosts[0]
    size = s.args.follow_mib * MIB
    blob = bed.home / "follow-blob"
    with open("/dev/urandom", "rb") as source, open(blob, "wb") as sink:
        for _ in range(s.args.follow_mib):
            sink.write(source.read(MIB))
    os.chown(blob, bed.uid, -1)
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    env = s.home("follow", [h1])
    plain = ssh_env(s.tmp / "ssh")
    ssh = ssh_command(bed, h1, s.tmp / "ssh")
    times: dict[str, list[float]] = {"ssh": [], "follow": []}
    cpu: list[float] = []
    with daemon(env, s.tmp / "follow-daemon.log") as process:
        _, done = cli(env, "job", "start", "--host", h1.name, "true")
        cli(env, "job", "wait", started_id(done))
        for _ in range(s.args.follow_runs):
            times["ssh"].append(read_all([*ssh, f"cat {blob}"], plain, time.perf_counter(),
                                         size, digest))
            cpu_before = cpu_seconds(process.pid)
            began = time.perf_counter()
            _, done = cli(env, "job", "start", "--host", h1.name, "cat", str(blob))
            job_id = started_id(done)
            times["follow"].append(read_all(
                [str(DISTSVC), "job", "logs", "--follow", "--stdout", job_id], env, began,
                size, digest))
            cpu.append(cpu_seconds(process.pid) - cpu_before)
            cli(env, "job", "remove", job_id)
    pieces = sessions_on(env, h1.name, 10, str(blob), distsvc.jobs.remote.LOOK_MOST)
    blob.unlink()
    return {"times": times, "mib": s.args.follow_mib, "daemon_cpu": cpu, "pieces": pieces,
            "fetch_max": distsvc.jobs.remote.LOOK_MOST}


# --- the systemd host ------------------------------------------------------------------------


@contextlib.contextmanager
def systemd_host(bed: sshbed.Bed, wanted: bool) -> Iterator[Systemd]:
    """The container's sshd (tests/container.py `booted_with_sshd`), logging in with the
    bed's client key, or why there is none."""
    if not wanted:
        yield Systemd(missing="--skip systemd")
        return
    try:
        import container
    except Exception as error:
        yield Systemd(missing=f"tests/container.py does not import: {error!r}")
        return
    if not hasattr(container, "booted_with_sshd"):
        yield Systemd(missing="tests/container.py has no sshd in the container yet "
                              "(booted_with_sshd)")
        return
    reason = container.can_boot()
    if reason:
        yield Systemd(missing=f"the container cannot boot here: {reason}")
        return
    public = bed.client_key.with_name(bed.client_key.name + ".pub").read_text()
    with container.booted_with_sshd(authorized_key=public) as (_, host):
        yield Systemd(host=host)


# --- report ----------------------------------------------------------------------------------


def report_start(r: dict[str, Any], systemd: Systemd, rounds: int) -> list[str]:
    times: dict[str, list[float]] = r["times"]
    fresh = median(times["ssh, fresh connection"])
    out = [f"### 1. Placing and starting a job ({rounds} rounds, interleaved)", ""]
    out += [f"Each job is `true` on a host of the bed (supervisor mode: "
            f"{', '.join(f'{h} {m}' for h, m in r['modes'])}), started from `{WORKDIR}`; "
            "a `job start` returns once the job runs there (its ID printed).", ""]
    out += [row("what", "command", "median ms", "p99 ms", "x fresh ssh"),
            "|---|---|---:|---:|---:|"]
    for name, values in times.items():
        out.append(row(name, f"`{r['shown'][name]}`", ms(median(values)), ms(p99(values)),
                       f"{median(values) / fresh:.2f}"))
    if systemd.host is None:
        out += ["", f"`ssh H systemd-run --user true` is **missing**: {systemd.missing}. Only "
                "the supervisor hosts were measured."]
    pieces: dict[str, list[float]] = r["pieces"]
    out += ["", "Pieces, on a warm connection of distsvc's SSH adapter in a separate process "
            "(one `exec /bin/sh -s` session each, the script on its stdin, as the daemon's "
            "runner opens them):", ""]
    out += [row("session", "median ms", "p99 ms"), "|---|---:|---:|"]
    for name, values in pieces.items():
        out.append(row(name, ms(median(values)), ms(p99(values))))
    record = r["record"]
    out += ["", f"The daemon's log of one start-and-wait (`--log-level debug`; created "
            f"{record['created']:.3f}, started {record['started']:.3f}, ended "
            f"{record['ended']:.3f} in its record):", "", "```"]
    out += [*r["log"][:8], "```", ""]
    out += [f"{r['jobs']} jobs ran, all exited 0; the daemon's VmRSS after: "
            f"{r['daemon_rss'] / 1024:.1f} MiB.", ""]
    return out


def report_queue(r: dict[str, Any]) -> list[str]:
    out = [f"### 2. {r['count']} jobs queued on 3 hosts with {SLOTS} slots each", ""]
    submit = r["submit_times"]
    out += [f"`distsvc job start sleep 1` x {r['count']}, from {r['submitters']} submitters "
            f"at once (each a loop of client processes; all submitted after "
            f"{r['submitted']:.1f} s, one submit {ms(median(submit))} ms median, "
            f"{ms(p99(submit))} ms p99); then one `distsvc job wait` on all of them.", ""]
    out += [row("what", "s"), "|---|---:|"]
    out += [row("**wall: first submit until `job wait` returned**", f"**{r['wall']:.1f}**"),
            row(f"ideal: ceil({r['count']} / {SLOTS * 3}) x 1 s", f"{r['ideal']:.0f}"),
            row("first command started on a host, after the first submit",
                f"{r['first_start_after']:.2f}"),
            row("last command ended on a host, after the first submit",
                f"{r['last_end_after']:.1f}"),
            row("a command's run on its host (`pid` to `status`), median / max",
                f"{median(r['runs']):.3f} / {max(r['runs']):.3f}"),
            row("a freed slot until its next command started, median / p99 / max",
                f"{median(r['gaps']):.3f} / {p99(r['gaps']):.3f} / {max(r['gaps']):.3f}"
                if r["gaps"] else "-")]
    rss = r["rss"]
    out += ["", f"Slots busy {r['slot_use'] * 100:.0f}% of the time from the first start to "
            f"the last end. The daemon used {r['cpu']:.2f} s of CPU from the first submit "
            f"until the wait returned; VmRSS {rss[0] / 1024:.1f} MiB before, "
            f"{rss[1] / 1024:.1f} MiB after, {rss[2] / 1024:.1f} MiB 5 s later (threads "
            f"{' -> '.join(r['threads'])}).", ""]
    out += [f"Checks: {r['records']} records, {r['bad']} not exited 0"
            + (f" (e.g. {r['bad_example']})" if r["bad"] else "")
            + f"; jobs per host {r['per_host']}; most at once on a host from the "
            f"supervisors' files {r['most_on_host']}, from the records' started/ended "
            f"{r['most_in_records']}, in {r['samples']} samples of `distsvc hosts --json` "
            f"{r['most_sampled']}.", ""]
    return out


def report_follow(r: dict[str, Any]) -> list[str]:
    mib = r["mib"]
    runs = len(r["times"]["ssh"])
    out = [f"### 3. Following a remote job's output ({mib} MiB, {runs} runs each)", ""]
    out += [row("path", "median s", "MiB/s (at median)", "fastest s", "slowest s"),
            "|---|---:|---:|---:|---:|"]
    labels = {"ssh": f"`ssh H cat FILE` ({mib} MiB of random bytes)",
              "follow": "`distsvc job start --host H cat FILE`, then `distsvc job logs "
                        "--follow --stdout ID` to its end"}
    for key, values in r["times"].items():
        m = median(values)
        out.append(row(labels[key], f"{m:.2f}", f"{mib / m:.0f}", f"{min(values):.2f}",
                       f"{max(values):.2f}"))
    pieces = {k: median(v) for k, v in r["pieces"].items()}
    fetch = r["fetch_max"] / MIB
    out += ["", f"Every byte checked (SHA-256). The daemon's CPU per followed job: "
            f"{median(r['daemon_cpu']):.2f} s (median). One look of the host's watcher "
            f"fetches at most {fetch:.0f} MiB (LOOK_MOST, reached by doubling from "
            f"{distsvc.jobs.remote.LOOK_MAX / MIB:.0f} MiB while looks are quick); such a session "
            f"(`tail -c +1 FILE | head -c {r['fetch_max']}` on a warm connection) takes "
            f"{ms(pieces['fetch'])} ms, an empty one {ms(pieces['empty script'])} ms: at most "
            f"{fetch / pieces['fetch']:.0f} MiB/s through one look after another.", ""]
    return out


def report(info: dict[str, str], command: str, results: dict[str, Any], systemd: Systemd,
           args: argparse.Namespace) -> str:
    out = preamble(
        HEADING,
        "Measured by `bench/remote_jobs_bench.py` against the test bed's OpenSSH servers "
        "(`tests/sshbed.py`, OpenSSH's defaults; no systemd user manager there, so jobs run "
        "under the setsid supervisor)"
        + ("" if systemd.host is None else
           " and the booted container's sshd (`tests/container.py`, host `sd`: a systemd user "
           "manager, jobs through `systemd-run --user`; reached through the bed's forwarder "
           "threads, which add to every session there)")
        + ", through a daemon started for the bench user as the tests start one; clients with "
        "clean homes and their runtime directories on a tmpfs. Figures are wall times of "
        "whole client processes unless a row says otherwise.",
        command, info)
    if "start" in results:
        out += report_start(results["start"], systemd, args.rounds)
    if "queue" in results:
        out += report_queue(results["queue"])
    if "follow" in results:
        out += report_follow(results["follow"])
    return "\n".join(out)


# --- main ------------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str], Systemd]:
    results: dict[str, Any] = {}
    observed, loads = [], []
    with tempfile.TemporaryDirectory(prefix="distsvc-bench-") as tmp, \
            tempfile.TemporaryDirectory(prefix="distsvc-bench-", dir=TMPFS) as runtime, \
            sshbed.running(3) as bed, \
            systemd_host(bed, "systemd" not in args.skip and "start" not in args.skip) as sd:
        Path(tmp).chmod(0o700)
        markers = [tmp, runtime, str(bed.root)]
        observed.append(f"before: {conditions(bed.root)}")
        s = Setting(bed, Path(tmp), Path(runtime), args, sd)
        for part, function in (("start", part_start), ("queue", part_queue),
                               ("follow", part_follow)):
            if part in args.skip:
                continue
            loads.append(f"{part} {load_now()}")
            began = time.perf_counter()
            results[part] = function(s)
            print(f"{part}: {time.perf_counter() - began:.1f} s", file=sys.stderr)
        observed.append(f"after: {conditions(bed.root)}")
        bed_root = bed.root
        systemd = sd
    left = stray_sshd(bed_root) + ours(markers)
    if left:
        raise RuntimeError(f"processes left behind: {left}")
    info = {**machine(), "tmpfs for runtime directories": str(TMPFS),
            "conditions": "; ".join(observed),
            "load average (1, 5, 15 min) when each part started": "; ".join(loads)}
    return results, info, systemd


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="calls per start variant")
    parser.add_argument("--jobs", type=int, default=100, help="jobs queued in part 2")
    parser.add_argument("--submitters", type=int, default=4, help="parallel submitters")
    parser.add_argument("--follow-mib", type=int, default=100, help="MiB followed in part 3")
    parser.add_argument("--follow-runs", type=int, default=3, help="runs per follow path")
    parser.add_argument("--skip", action="append", default=[], choices=[*PARTS, "systemd"],
                        help="leave a part (or the container's systemd host) out; then "
                             "docs are not written")
    parser.add_argument("--no-docs", action="store_true",
                        help=f"only print; do not update {DOCS.relative_to(ROOT)}")
    args = parser.parse_args()
    if min(args.rounds, args.jobs, args.submitters, args.follow_mib, args.follow_runs) < 1:
        parser.error("counts must be at least 1")
    reason = sshbed.can_run()
    if reason:
        print(f"remote_jobs_bench: {reason}", file=sys.stderr)
        return 2
    command = shlex.join([".venv/bin/python", "bench/remote_jobs_bench.py", *sys.argv[1:]])
    results, info, systemd = bench(args)
    section = report(info, command, results, systemd, args)
    publish(HEADING, section, not args.no_docs, bool(args.skip))
    return 0


if __name__ == "__main__":
    sys.exit(main())
