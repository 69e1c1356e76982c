"""What does the per-user daemon (issue 3) buy, and what does it cost?

Issue 2 (bench/run_bench.py) found that a daemon-less `distsvc-run` spends most of its time
importing paramiko and shaking hands. The daemon (`distsvc daemon`) keeps authenticated
connections warm; `distsvc-run` passes it its stdin/stdout/stderr over a unix socket and the
daemon runs the command on a pooled connection. This script measures, in one run, against
the SSH servers of the test bed in tests/sshbed.py:

1. Latency of `true`: `distsvc-run` through a warm daemon (started beforehand with the
   client's environment, warmed with a few calls) next to a fresh `ssh`, `ssh` through an
   open ControlMaster, and `distsvc-run` with DISTSVC_DAEMON=off (the in-process path);
   medians of --runs calls interleaved round by round. The project's goal is at most 0.3x
   the fresh ssh and close to ControlMaster. Then where the daemon path's time goes: the
   interpreter's start-up (`python -c pass`), the client's stages (imports, arguments,
   config, the request) timed inside a fresh interpreter that goes through distsvc-run's
   steps, with `python -X importtime` naming the heaviest imports, and the daemon's part,
   timed by sending the same `run` request from this process (and its pieces: a warm SSH
   channel, the remote wrapper, a `status` and a `best` request); and the CPU time (user +
   sys, from wait4) of each client process, next to `python -c pass` and ssh's.
2. 200 MiB of stdout (`head -c 209715200 /dev/zero`) through the daemon, next to ssh fresh,
   ssh ControlMaster and DISTSVC_DAEMON=off.
2b. The daemon's VmRSS with 3 hosts, warm (measured, a few commands run), then after a
   1 GiB (--big-stream-mib) stream of stdout through it.
3. Best-host queries (`distsvc.actions.client.query({"type": "best", ...})`, one connection
   per query as the protocol requires) against a daemon with the bed's 4 hosts measured
   beforehand (so no query probes): latency over --queries sequential queries, then the
   throughput of --clients concurrent client processes (from a fresh daemon and state).
   Every `best` answer records an anonymous placement for 60 s and may start a background
   measurement of one of the 3 best hosts (at most once per 5 s per host); both are part
   of what is measured, so the latency is also shown as it evolves over the run.
3b. `best` throughput and p99 from --clients concurrent processes that loop on one
   pre-encoded frame over a raw socket (not the full client, so the clients are not what is
   measured), next to `status` the same way; the clients' and the daemon's CPU shares.
3c. --burst (100) concurrent `distsvc-run true` through one daemon with the bed's hosts at
   OpenSSH's default MaxSessions: how many succeed, their wall time next to the slowest of
   --runs single calls, and the daemon's CPU per command (/proc/PID/stat); then --burst
   `distsvc-run sleep 1` at once next to the slowest of 3 alone (the wall-time goal: with
   `true` the wall is the start-up of 100 Python clients on 2 CPUs, with a command that
   lasts it shows whether the daemon runs them side by side).
4. Cold start, from nothing running to the first answer: (a) `distsvc daemon` started as a
   subprocess, polled with status queries until one is answered; and what a user meets
   first, `distsvc-run` with no daemon (in-process fallback, spawning one); (b) through
   systemd socket activation, in the systemd-nspawn container of tests/container.py (user
   units installed from systemd/, pointing at this venv), timed inside by
   bench/cold_start_inside.py (which flushes systemd's start rate limit between its
   back-to-back starts); skipped, with the reason, where the container cannot boot.
5. `distsvc scan` over 200 hosts with no state (so all 200 are due): one SSH server per 16
   loopback addresses 127.0.1.1-127.0.1.200 (OpenSSH listens on at most 16 addresses per
   process, MAX_LISTEN_SOCKS), same port, the bed's host key, user and authorized_keys;
   wall time, CPU of the scan (wait4's rusage) and of the servers, and how many came out up.
6. The daemon's memory with those 200 hosts configured: VmRSS right after start, and after
   one `hosts --refresh` request through it (it then holds warm connections; their number
   from `distsvc status --json`); then the same request again over the warm connections,
   for what a scan pass through the daemon would cost next to part 5.

The report ends with "Goals of issue 9": each goal of the issue's table, the figure of this
run it is judged by, and met or NOT met. Part 4b also times a fresh `ssh host true`, the
figure the cold start through socket activation is held against.

The runtime directory of every client (the daemon's socket, the state file) is on a tmpfs
(/dev/shm), as /run/user/UID is on a systemd machine; the state file is fsync'ed on every
write, which on a disk would add to every query. Clients get clean homes as in
tests/conftest.py; `ssh` runs with `-F /dev/null` and explicit key and known_hosts.

Everything started here is stopped at the end (daemons, sshd, ControlMaster, container,
temporary directories) and the script fails if a process of its own is left.
A test run at the same time competes for the 2 CPUs and skews the figures: the report
records the load average and other test beds and daemons before and after.

Usage (as root, from the repository root; a few minutes):

    .venv/bin/python bench/daemon_bench.py [--runs N] [--queries N] [--skip PART]... [--no-docs]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import (
    DISTSVC,
    DISTSVC_RUN,
    DOCS,
    LISTEN_PER_SSHD,
    MIB,
    PYTHON,
    ROOT,
    STREAM_BYTES,
    STREAM_COMMAND,
    TMPFS,
    Call,
    Concurrent,
    Goal,
    Setting,
    Variant,
    burst,
    check_master,
    concurrent_raw,
    config_mapping,
    control_master,
    cpu_seconds,
    daemon,
    frame,
    goal_rows,
    import_times,
    kib,
    latency_rounds,
    machine,
    many_hosts,
    median,
    ms,
    p90,
    p99,
    preamble,
    proc_status,
    publish,
    raise_fd_limit,
    refresh_through,
    request,
    row,
    servers_cpu,
    setting,
    socket_path,
    ssh_command,
    ssh_env,
    sshbed,
    stop_daemon,
    stream_call,
    stream_rounds,
    time_call,
    timed_scan,
    wait_until_answering,
)

import distsvc.actions.client  # the venv has distsvc (the tests/ path is set by common)
import distsvc.adapters.unix
import distsvc.config
import distsvc.state

DOCS_HEADING = "## The daemon (issues 3 and 9)"
PARTS = ("latency", "stream", "queries", "throughput", "burst", "rss", "cold", "container",
         "scan", "memory")
INSIDE_SCRIPT = ROOT / "bench" / "cold_start_inside.py"
GOAL = 0.3  # the project's goal: the daemon path at most 0.3x a fresh ssh
COLD_GOAL = 1.2  # issue 9: the first answer through socket activation vs a fresh ssh


# --- the daemon ------------------------------------------------------------------------------


def timed_requests(env: dict[str, str], message: dict[str, Any], runs: int,
                   fds: Sequence[int] = ()) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        request(env, message, fds)
        times.append(time.perf_counter() - started)
    return times


# --- the setting -----------------------------------------------------------------------------


def load_now() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- 1. latency ------------------------------------------------------------------------------


WARM_CHANNEL_SCRIPT = """if True:
    # Run with a client's environment (HOME, known_hosts, key): a warm paramiko connection
    # of distsvc's own SSH adapter, timing what the daemon does on it for `distsvc-run true`.
    import json, os, sys, time
    import distsvc.adapters.ssh, distsvc.config, distsvc.remote
    config = distsvc.config.load(None, os.environ)
    pool = distsvc.adapters.ssh.Pool()
    connection = pool.sessions(config.hosts[0], config.host_key_policy, 10.0)
    runs, workdir = int(sys.argv[1]), sys.argv[2]
    out = {}
    def timed(name, command, stdin=b""):
        values = []
        for _ in range(runs):
            started = time.perf_counter()
            status, _ = connection.run(command, stdin=stdin)
            values.append(time.perf_counter() - started)
            assert status == 0, (name, status)
        out[name] = values
    timed("true", "true")
    token = distsvc.remote.new_token()
    timed("wrapper", distsvc.remote.wrapper(["true"], workdir, token, False),
          distsvc.remote.environment_script({}).encode())
    pool.close_all()
    print(json.dumps(out))
"""


CLIENT_STAGES_SCRIPT = """if True:
    # distsvc-run's main() stage by stage on its fast path (a daemon answers), in a fresh
    # interpreter with the client's environment: seconds per stage.
    import time
    t0 = time.perf_counter()
    import os, sys
    import distsvc.commands.run, distsvc.actions.client
    t1 = time.perf_counter()
    status = distsvc.actions.client.run_fast(sys.argv[1:], os.environ)
    t2 = time.perf_counter()
    assert status == 0, status
    modules = len(sys.modules)
    print(f'{{"imports": {t1 - t0}, "request": {t2 - t1}, "modules": {modules}}}')
"""


def cpu_per_call(argv: Sequence[str], env: dict[str, str], cwd: Path, runs: int) -> list[float]:
    """CPU seconds (user + sys, from wait4's rusage) of each of `runs` calls of argv."""
    values = []
    for _ in range(runs):
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _pid, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} exited {process.returncode}")
        values.append(usage.ru_utime + usage.ru_stime)
    return values


def client_stages(env: dict[str, str], cwd: Path, runs: int) -> dict[str, list[float]]:
    """CLIENT_STAGES_SCRIPT `runs` times: every stage's seconds (and the modules loaded)."""
    stages: dict[str, list[float]] = {}
    for _ in range(runs):
        done = subprocess.run([str(PYTHON), "-c", CLIENT_STAGES_SCRIPT, "true"], env=env,
                              cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, check=True, timeout=60)
        for name, value in json.loads(done.stdout).items():
            stages.setdefault(name, []).append(value)
    return stages


def part_latency(s: Setting) -> dict[str, Any]:
    bed, host, runs = s.bed, s.bed.hosts[0], s.args.runs
    via_daemon = s.home("latency-daemon", daemon=True)
    direct = s.home("latency-off", daemon=False)
    plain = ssh_env(s.tmp / "ssh")
    ssh = ssh_command(bed, host, s.tmp / "ssh")
    bare = {"PATH": plain["PATH"], "LANG": "C.UTF-8"}
    with daemon(via_daemon, s.log("latency-daemon")) as process, \
            control_master(ssh, plain, s.tmp / "cm") as muxed:
        for _ in range(5):  # warm: the first call measures h1 and opens the pooled connection
            time_call([str(DISTSVC_RUN), "true"], via_daemon, bed.home)
        variants = [
            Variant("ssh, fresh connection", "ssh -F /dev/null -p PORT -i KEY -o ... "
                    "user@addr true", [*ssh, "true"], plain),
            Variant("ssh, fresh, paramiko's kex", "ssh ... -o KexAlgorithms=curve25519-sha256 "
                    "user@addr true", [*ssh[:-1], "-o", "KexAlgorithms=curve25519-sha256",
                                       ssh[-1], "true"], plain),
            Variant("ssh, ControlMaster", "ssh ... -o ControlPath=CM user@addr true",
                    [*muxed, "true"], plain),
            Variant("distsvc-run, warm daemon", "distsvc-run true",
                    [str(DISTSVC_RUN), "true"], via_daemon),
            Variant("distsvc-run, DISTSVC_DAEMON=off", "DISTSVC_DAEMON=off distsvc-run true",
                    [str(DISTSVC_RUN), "true"], direct),
            Variant("python -c pass", ".venv/bin/python -c pass",
                    [str(PYTHON), "-c", "pass"], bare),
        ]
        latency = latency_rounds(variants, bed.home, runs)
        cpu = [(v, cpu_per_call(v.argv, v.env, bed.home, runs)) for v in variants
               if v.name in ("ssh, ControlMaster", "distsvc-run, warm daemon", "python -c pass")]

        # The daemon's part, from this process: the same `run` request distsvc-run sends.
        mapping = config_mapping(via_daemon)
        null_in = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        null_out = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            # distsvc-run's own request (actions/client.run_fast): the daemon reads the config.
            run_message = {"type": "run", "argv": ["true"], "environ": via_daemon,
                           "cwd": str(bed.home)}
            pieces = {"run": timed_requests(via_daemon, run_message, runs,
                                            [null_in, null_out, null_out]),
                      "status": timed_requests(via_daemon, {"type": "status"}, runs)}
        finally:
            os.close(null_in)
            os.close(null_out)
        warm = subprocess.run([str(PYTHON), "-c", WARM_CHANNEL_SCRIPT, str(runs), str(bed.home)],
                              env=via_daemon, capture_output=True, text=True, check=True,
                              timeout=120)
        pieces.update(json.loads(warm.stdout))
        stages = client_stages(via_daemon, bed.home, runs)
        # Last: each `best` answer counts as a job on h1 for 60 s (see part 3).
        pieces["best"] = timed_requests(via_daemon, {"type": "best", "config": mapping}, runs)
        daemon_rss = kib(proc_status(process.pid)["VmRSS"])
    imports = import_times("distsvc.commands.run")
    return {"latency": latency, "pieces": pieces, "imports": imports, "stages": stages,
            "daemon_rss": daemon_rss, "cpu": cpu}


# --- 2. streaming ----------------------------------------------------------------------------


def part_stream(s: Setting) -> dict[str, Any]:
    bed, host = s.bed, s.bed.hosts[0]
    via_daemon = s.home("stream-daemon", daemon=True)
    direct = s.home("stream-off", daemon=False)
    plain = ssh_env(s.tmp / "ssh")
    ssh = ssh_command(bed, host, s.tmp / "ssh")
    command = STREAM_COMMAND.split()
    with daemon(via_daemon, s.log("stream-daemon")) as served, \
            control_master(ssh, plain, s.tmp / "cm-stream") as muxed:
        for _ in range(3):
            time_call([str(DISTSVC_RUN), "true"], via_daemon, bed.home)
        variants = [
            Variant("ssh, fresh connection", f"ssh ... user@addr '{STREAM_COMMAND}'",
                    [*ssh, STREAM_COMMAND], plain),
            Variant("ssh, ControlMaster", f"ssh ... -o ControlPath=CM user@addr "
                    f"'{STREAM_COMMAND}'", [*muxed, STREAM_COMMAND], plain),
            Variant("distsvc-run, warm daemon", f"distsvc-run {STREAM_COMMAND}",
                    [str(DISTSVC_RUN), *command], via_daemon),
            Variant("distsvc-run, DISTSVC_DAEMON=off", f"DISTSVC_DAEMON=off distsvc-run "
                    f"{STREAM_COMMAND}", [str(DISTSVC_RUN), *command], direct),
        ]
        # CPU of the two long-lived processes that carry streams (nothing else uses them
        # here): the daemon for its variant, the master for its own.
        master = check_master(muxed, plain)
        before = cpu_seconds(served.pid), cpu_seconds(master)
        rounds = stream_rounds(variants, bed.home, s.args.stream_runs)
        cpu = {"daemon": (cpu_seconds(served.pid) - before[0]) / s.args.stream_runs,
               "master": (cpu_seconds(master) - before[1]) / s.args.stream_runs}
        return {"stream": rounds, "cpu": cpu}


# --- 3. best-host queries --------------------------------------------------------------------


def query_worker(env: dict[str, str], message: dict[str, Any], count: int,
                 barrier: Any, results: Any) -> None:
    """One concurrent client (a forked process): `count` queries, one connection each."""
    try:
        barrier.wait()
        times = []
        for _ in range(count):
            started = time.perf_counter()
            distsvc.actions.client.query(message, env)
            times.append(time.perf_counter() - started)
        results.put(times)
    except BaseException as error:  # the parent must hear of it, not wait forever
        results.put(repr(error))


def concurrent_queries(env: dict[str, str], message: dict[str, Any], clients: int,
                       each: int) -> tuple[float, list[float]]:
    """`clients` processes making `each` queries at once: (wall seconds, every latency)."""
    return forked_clients(query_worker, [(env, message, each)] * clients, "query clients")


def forked_clients(target: Any, arguments: list[tuple[Any, ...]], what: str
                   ) -> tuple[float, list[float]]:
    """One forked process per tuple of `arguments`, each running target(*its arguments,
    barrier, results) and putting its latencies (or the repr of its error) on `results`;
    released together: (wall seconds from the release, every latency)."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(arguments) + 1)
    results = context.Queue()
    workers = [context.Process(target=target, args=(*args, barrier, results))
               for args in arguments]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    collected = [results.get(timeout=600) for _ in workers]
    wall = time.perf_counter() - started
    for worker in workers:
        worker.join(30)
    failed = [c for c in collected if isinstance(c, str)]
    if failed:
        raise RuntimeError(f"{len(failed)} {what} failed: {failed[0]}")
    return wall, [t for c in collected for t in c]


def paced_worker(env: dict[str, str], message: dict[str, Any], count: int, interval: float,
                 offset: float, barrier: Any, results: Any) -> None:
    """One open-loop client: query k is due at start + offset + k * interval, whether or not
    the one before was answered late; its latency counts from when it was due (a late
    answer delays the next ones, and their wait counts: no coordinated omission)."""
    try:
        barrier.wait()
        start = time.perf_counter() + offset
        times = []
        for k in range(count):
            due = start + k * interval
            if (ahead := due - time.perf_counter()) > 0:
                time.sleep(ahead)
            distsvc.actions.client.query(message, env)
            times.append(time.perf_counter() - due)
        results.put(times)
    except BaseException as error:
        results.put(repr(error))


def paced_queries(env: dict[str, str], message: dict[str, Any], clients: int, rate: float,
                  seconds: float) -> tuple[float, list[float]]:
    """`clients` processes sending `rate` queries/s in all for `seconds`, evenly staggered:
    (wall seconds, every latency from its due time)."""
    interval = clients / rate
    each = max(1, round(rate * seconds / clients))
    return forked_clients(paced_worker, [(env, message, each, interval, interval * i / clients)
                                         for i in range(clients)], "paced query clients")


def placements(env: dict[str, str]) -> int:
    return len(distsvc.state.read(socket_path(env).parent).placements)


def part_queries(s: Setting) -> dict[str, Any]:
    hosts = s.bed.hosts
    import distsvc.actions.placement

    out: dict[str, Any] = {"hosts": len(hosts), "anonymous_cap": getattr(
        distsvc.actions.placement, "MAX_ANONYMOUS_PER_HOST", None)}
    sequential = s.home("queries-seq", daemon=True, hosts=hosts)
    with daemon(sequential, s.log("queries-seq")):
        rows = refresh_through(sequential)
        out["up"] = sum(r["state"] == "up" for r in rows)
        best = {"type": "best", "config": config_mapping(sequential)}
        times = []
        started = time.perf_counter()
        for _ in range(s.args.queries):
            began = time.perf_counter()
            distsvc.actions.client.query(best, sequential)
            times.append(time.perf_counter() - began)
        out["sequential_wall"] = time.perf_counter() - started
        out["sequential"] = times
        out["placements_after"] = placements(sequential)
        out["state_bytes_after"] = (socket_path(sequential).parent / "state.json").stat().st_size

    concurrent = s.home("queries-conc", daemon=True, hosts=hosts)
    with daemon(concurrent, s.log("queries-conc")) as served:
        refresh_through(concurrent)
        status = {"type": "status"}
        best = {"type": "best", "config": config_mapping(concurrent)}
        clients = s.args.clients
        out["clients"] = clients
        # status first: it reads the state file too, which the best queries make grow.
        out["status_concurrent"] = concurrent_queries(concurrent, status, clients,
                                                      s.args.status_queries)
        cpu = cpu_seconds(served.pid)
        out["best_concurrent"] = concurrent_queries(concurrent, best, clients,
                                                    s.args.client_queries)
        out["best_concurrent_daemon_cpu"] = cpu_seconds(served.pid) - cpu
        out["paced_rate"] = s.args.paced_rate
        out["best_paced"] = paced_queries(concurrent, best, clients, s.args.paced_rate,
                                          s.args.paced_seconds)
        out["placements_after_concurrent"] = placements(concurrent)
    return out


# --- 3b. best throughput, raw clients ------------------------------------------------------------


def part_throughput(s: Setting) -> dict[str, Any]:
    """`best` from --clients concurrent processes that each loop on one pre-encoded frame
    over a raw socket (common.raw_query: no imports, no JSON on the client), so the clients
    cost as little as a client can; `status` the same way, for the daemon's floor. A fresh
    daemon and state, the bed's hosts measured first through it."""
    env = s.home("throughput", daemon=True, hosts=s.bed.hosts)
    path = socket_path(env)
    with daemon(env, s.log("throughput")) as process:
        rows = refresh_through(env)
        mapping = config_mapping(env)
        status = frame({"type": "status"})
        best = frame({"type": "best", "config": mapping})
        each = s.args.raw_queries
        warm = concurrent_raw(path, best, s.args.clients, 5)  # forks, first answers
        results = {
            "status": concurrent_raw(path, status, s.args.clients, each, process.pid),
            "best": concurrent_raw(path, best, s.args.clients, each, process.pid),
            "best, 1 client": concurrent_raw(path, best, 1, each * 4, process.pid),
        }
    return {"results": results, "up": sum(r["state"] == "up" for r in rows),
            "hosts": len(rows), "warm": len(warm.latencies), "cpus": os.cpu_count() or 1}


# --- 3c. 100 concurrent commands -------------------------------------------------------------


HELD_SECONDS = 1.0  # part 3c's command that lasts: `distsvc-run sleep 1`


def part_burst(s: Setting) -> dict[str, Any]:
    """--burst concurrent `distsvc-run true` through one warm daemon with the bed's hosts (at
    OpenSSH's default MaxSessions 10 and MaxStartups 10:30:100): all must succeed; their wall
    time next to the slowest of --runs single calls made alone just before; the daemon's CPU
    per command (utime+stime from /proc/PID/stat)."""
    env = s.home("burst", daemon=True, hosts=s.bed.hosts)
    argv = [str(DISTSVC_RUN), "true"]
    logs = s.tmp / "burst-logs"
    logs.mkdir()
    with daemon(env, s.log("burst")) as process:
        refresh_through(env)
        for _ in range(5):
            time_call(argv, env, s.bed.home)
        singles = [time_call(argv, env, s.bed.home) for _ in range(s.args.runs)]
        burst(argv, env, s.bed.home, s.args.burst, logs)  # warm: the pool grows to fit
        time.sleep(1.0)
        cpu_before = cpu_seconds(process.pid)
        calls = burst(argv, env, s.bed.home, s.args.burst, logs)
        daemon_cpu = cpu_seconds(process.pid) - cpu_before
        # The wall-time goal, with a command that lasts: `true` measures the start-up of
        # --burst Python clients on 2 CPUs, `sleep` whether the daemon runs them side by side
        # (more than MaxSessions per host, so it must open further connections) or in turns.
        held = [str(DISTSVC_RUN), "sleep", f"{HELD_SECONDS:g}"]
        held_singles = [time_call(held, env, s.bed.home) for _ in range(3)]
        held_calls = burst(held, env, s.bed.home, s.args.burst, logs)
        status = request(env, {"type": "status"})[-1]
    return {"singles": singles, "calls": calls, "daemon_cpu": daemon_cpu,
            "held_singles": held_singles, "held_calls": held_calls,
            "connections": status.get("connections"), "hosts": len(s.bed.hosts)}


# --- 2b. the daemon's memory: idle with 3 hosts, after a 1 GiB stream --------------------------


def part_rss(s: Setting) -> dict[str, Any]:
    """VmRSS of a daemon with 3 hosts, warm (all measured, a few commands run), then right
    after and 5 s after a --big-stream-mib stream of stdout through it."""
    hosts = s.bed.hosts[:3]
    env = s.home("rss", daemon=True, hosts=hosts)
    size = s.args.big_stream_mib * MIB
    with daemon(env, s.log("rss")) as process:
        refresh_through(env)
        for _ in range(5):
            time_call([str(DISTSVC_RUN), "true"], env, s.bed.home)
        time.sleep(1.0)
        idle = proc_status(process.pid)
        # Not raised at once: the figures after it are what this part is for.
        streamed = stream_call([str(DISTSVC_RUN), "head", "-c", str(size), "/dev/zero"], env,
                               s.bed.home, timeout=900)
        after = proc_status(process.pid)
        time.sleep(5.0)
        settled = proc_status(process.pid)
    return {"hosts": len(hosts), "idle": idle, "after": after, "settled": settled,
            "bytes": size, "streamed": streamed}


# --- 4. cold start ---------------------------------------------------------------------------


def part_cold(s: Setting) -> dict[str, Any]:
    """(a) `distsvc daemon` as a subprocess until it answers; and distsvc-run with no daemon,
    which runs in-process and spawns one, until that one answers."""
    env = s.home("cold", daemon=True)
    answered, status_cli, stopped = [], [], []
    for _ in range(s.args.cold_runs):
        with open(s.log("cold"), "ab") as err:
            started = time.perf_counter()
            process = subprocess.Popen([str(DISTSVC), "daemon"], env=env, cwd="/",
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=err)
        try:
            answered.append(wait_until_answering(env, process, started))
            status_cli.append(time_call([str(DISTSVC), "status"], env, s.bed.home))
        finally:
            stopping = time.perf_counter()
            stop_daemon(process, env)
            stopped.append(time.perf_counter() - stopping)

    first_run, spawned_ready = [], []
    for _ in range(s.args.cold_runs):
        started = time.perf_counter()
        first_run.append(time_call([str(DISTSVC_RUN), "true"], env, s.bed.home))
        spawned_ready.append(wait_until_answering(env, None, started))
        pid = int(distsvc.actions.client.query({"type": "status"}, env)["pid"])
        os.kill(pid, signal.SIGTERM)  # it answered on our socket: it is the one we spawned
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if Path(f"/proc/{pid}").exists():
            raise RuntimeError(f"spawned daemon {pid} did not exit")
    imports = import_times("distsvc.daemon.handlers", runs=5)
    return {"answered": answered, "status_cli": status_cli, "stopped": stopped,
            "first_run": first_run,
            "spawned_ready": spawned_ready, "daemon_imports": imports}


def part_container(s: Setting) -> dict[str, Any]:
    """(b) socket activation in a systemd-nspawn container (tests/container.py)."""
    script = ROOT / "tests" / "container.py"
    if not script.exists():
        return {"skipped": "tests/container.py does not exist"}
    try:
        import container
    except Exception as error:  # another helper is still writing it
        return {"skipped": f"tests/container.py does not import: {error!r}"}
    reason = container.can_boot()
    if reason:
        return {"skipped": f"the container cannot boot here: {reason}"}
    service = (ROOT / "systemd" / "distsvc.service").read_text().replace(
        "ExecStart=/usr/bin/distsvc", f"ExecStart={DISTSVC}")
    units = {"distsvc.service": service,
             "distsvc.socket": (ROOT / "systemd" / "distsvc.socket").read_text()}
    key = s.tmp / "container_ed25519"
    try:
        started = time.perf_counter()
        with container.booted_with_sshd(authorized_key=container.client_keygen(key)) as (c, sd):
            boot = time.perf_counter() - started
            for name, text in units.items():
                c.write_file(f"{c.home}/.config/systemd/user/{name}", text, owner=c.user)
            # The container's sshd as the user's one host, logged in to with the user's
            # default key, as `ssh` and distsvc-run find it: the first `distsvc-run true`.
            c.write_file(f"{c.home}/.ssh/id_ed25519", key.read_bytes(), owner=c.user,
                         mode=0o600)
            c.write_file(f"{c.home}/.ssh/known_hosts",
                         f"[127.0.0.1]:{sd.port_inside} {sd.host_key}\n", owner=c.user)
            c.write_file(f"{c.home}/.config/distsvc/config.toml",
                         f'max_age = 3600\n[[hosts]]\nname = "sd"\naddress = "127.0.0.1"\n'
                         f'port = {sd.port_inside}\nuser = "{c.user}"\n', owner=c.user)
            c.run_as_user(["systemctl", "--user", "daemon-reload"])
            c.run_as_user(["systemctl", "--user", "start", "distsvc.socket"])
            c.run_as_user([str(DISTSVC), "hosts"], timeout=120)  # its load, for max_age
            done = c.run_as_user([str(PYTHON), str(INSIDE_SCRIPT), str(s.args.cold_runs),
                                  str(DISTSVC), f"-p {sd.port_inside} {c.user}@127.0.0.1"],
                                 timeout=600)
            result = json.loads(done.stdout)
            result["boot"] = boot
            result["state"] = c.system_state
            c.run_as_user(["systemctl", "--user", "stop", "distsvc.socket"])
        return dict(result)
    except Exception as error:
        output = getattr(error, "stderr", None) or ""
        last = [line.strip() for line in str(output).splitlines() if line.strip()][-1:]
        print(f"container: {error!r}\n{output}", file=sys.stderr)
        return {"skipped": f"the container run failed: {type(error).__name__}"
                + (f" ({last[0][:300]})" if last else f" ({str(error)[:300]})")}


# --- 5. and 6. 200 hosts ---------------------------------------------------------------------


def part_scan(s: Setting, hosts: list[sshbed.Host], sshd: list[int]) -> dict[str, Any]:
    """`distsvc scan` with no state: one pass measures all hosts, in-process."""
    env = s.home("scan", daemon=False, hosts=hosts, max_age=None)
    server_before = servers_cpu(sshd)
    wall, usage = timed_scan(env, s.log("scan"))
    time.sleep(0.5)  # the servers' connection processes end and are reaped
    state = distsvc.state.read(socket_path(env).parent)
    errors = Counter(entry.error for entry in state.hosts.values() if entry.state != "up")
    return {"wall": wall, "user": usage.ru_utime, "sys": usage.ru_stime,
            "maxrss": usage.ru_maxrss, "server_cpu": servers_cpu(sshd) - server_before,
            "states": Counter(entry.state for entry in state.hosts.values()),
            "errors": errors.most_common(3), "hosts": len(hosts)}


def timed_refresh(env: dict[str, str], pid: int) -> tuple[list[dict[str, Any]], float, float]:
    """A `hosts --refresh` through the daemon `pid`: its rows, wall seconds, daemon CPU s."""
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    rows = refresh_through(env)
    return rows, time.perf_counter() - started, cpu_seconds(pid) - cpu_before


def part_memory(s: Setting, hosts: list[sshbed.Host]) -> dict[str, Any]:
    """The daemon's VmRSS idle with 200 hosts configured, then holding warm connections."""
    env = s.home("memory", daemon=True, hosts=hosts, max_age=None)
    with daemon(env, s.log("memory")) as process:
        time.sleep(1.0)
        before = proc_status(process.pid)
        rows, refresh_wall, refresh_cpu = timed_refresh(env, process.pid)
        status = json.loads(subprocess.run(
            [str(DISTSVC), "status", "--json"], env=env, capture_output=True, text=True,
            check=True, timeout=60).stdout)
        after = proc_status(process.pid)
        time.sleep(5.0)
        settled = proc_status(process.pid)
        # The same refresh again, now over the warm connections: what a scan pass through
        # the daemon would cost instead of `distsvc scan`'s 200 handshakes.
        warm_rows, warm_wall, warm_cpu = timed_refresh(env, process.pid)
    return {"before": before, "after": after, "settled": settled,
            "connections": status["connections"], "rows_up": sum(
                r["state"] == "up" for r in rows), "refresh_wall": refresh_wall,
            "refresh_cpu": refresh_cpu, "warm_wall": warm_wall, "warm_cpu": warm_cpu,
            "warm_up": sum(r["state"] == "up" for r in warm_rows), "hosts": len(hosts)}


# --- report ----------------------------------------------------------------------------------


def report_latency(r: dict[str, Any], runs: int) -> list[str]:
    latency: list[tuple[Variant, list[float]]] = r["latency"]
    by_name = {v.name: median(values) for v, values in latency}
    fresh = by_name["ssh, fresh connection"]
    fresh_kex = by_name["ssh, fresh, paramiko's kex"]
    master = by_name["ssh, ControlMaster"]
    total = by_name["distsvc-run, warm daemon"]
    out = [f"### 1. Latency of a trivial command ({runs} calls each, interleaved)", ""]
    out += [row("variant", "command", "median ms", "p90 ms", "x fresh ssh"),
            "|---|---|---:|---:|---:|"]
    for variant, values in latency:
        out.append(row(variant.name, f"`{variant.shown}`", ms(median(values)), ms(p90(values)),
                       f"{median(values) / fresh:.2f}"))
    ratio = total / fresh
    out += ["", f"**Goal (at most {GOAL}x a fresh ssh): "
            f"{'met' if ratio <= GOAL else 'not met'}.** distsvc-run through the warm daemon "
            f"takes {ratio:.2f}x a fresh ssh ({ms(total)} / {ms(fresh)} ms), "
            f"{total / fresh_kex:.2f}x a fresh ssh with paramiko's key exchange, and "
            f"{total / master:.1f}x ssh through a ControlMaster ({ms(total - master)} ms more).",
            ""]
    pieces = {k: median(v) for k, v in r["pieces"].items()}
    stages = {k: median(v) for k, v in r["stages"].items()}
    imports = r["imports"]
    bare = by_name["python -c pass"]
    inside = stages["imports"] + stages["request"]
    out += ["Where the daemon path's time goes (medians). The client's stages are timed inside "
            f"a fresh interpreter going through distsvc-run's steps ({len(r['stages']['request'])}"
            " runs); the daemon's part by sending the same `run` request from the benchmark "
            "process:", ""]
    out += [row("part", "ms", "how it is measured"), "|---|---:|---|"]
    out += [
        row("**`distsvc-run true` through the warm daemon**", f"**{ms(total)}**",
            "the table above"),
        row("interpreter start-up and exit", ms(bare), "`python -c pass`"),
        row("importing `distsvc.commands.run`", ms(stages["imports"]),
            "heaviest by `python -X importtime` (cumulative ms, median of 7): "
            + (", ".join(f"{n} {t:.1f}" for n, t in imports.heaviest) or "only distsvc's")),
        row("the `run` request, client side", ms(stages["request"]),
            "connect, send argv, cwd, the environment and 3 fds, wait for `exit`: the "
            "daemon's work (config, environment, choosing, the command) and the socket"),
        row("not accounted for", ms(total - bare - inside),
            f"process creation, tearing down {median(r['stages']['modules']):.0f} modules, "
            "scheduling"),
        row("*the daemon's work*", ms(pieces["run"]),
            "the same `run` request from the benchmark process: peer check, config (cached) "
            "and environment, choose and record under the state lock, warm channel, wrapper, "
            "`true`, `exit` message"),
        row("*in it:* `true` on a warm channel", ms(pieces["true"]),
            "distsvc's SSH adapter in a separate process: open session, exec, exit status"),
        row("*in it:* the wrapper running `true`", ms(pieces["wrapper"]),
            "the same channel running distsvc's remote wrapper (environment on stdin, cd, "
            "watcher)"),
        row("*for comparison:* a `status` request", ms(pieces["status"]),
            "socket, peer check, handler thread, state file read"),
        row("*for comparison:* a `best` request", ms(pieces["best"]),
            "choose and record a placement under the state lock, no SSH"),
    ]
    out += ["", f"The daemon's VmRSS after these calls: {r['daemon_rss'] / 1024:.1f} MiB.", ""]
    out += [f"CPU time of each client process (user + sys from wait4, {runs} calls each):", "",
            row("variant", "median ms", "p90 ms"), "|---|---:|---:|"]
    out += [row(v.name, ms(median(values)), ms(p90(values))) for v, values in r["cpu"]]
    cpu = {v.name: median(values) for v, values in r["cpu"]}["distsvc-run, warm daemon"]
    out += ["", f"Issue 9's goals for the warm call: {total / master:.2f}x ssh through a "
            f"ControlMaster (at most 3.5x), {total / bare:.2f}x `python -c pass` (at most 2.5x), "
            f"client CPU {ms(cpu)} ms (at most 15).", ""]
    return out


def report_stream(r: dict[str, Any], runs: int) -> list[str]:
    out = [f"### 2. Streaming {STREAM_BYTES // MIB} MiB of stdout ({runs} runs each)", ""]
    out += [f"`{STREAM_COMMAND}` on the host; the benchmark reads the client's stdout (the "
            "daemon writes into it directly: it got the pipe as a file descriptor).", ""]
    out += [row("path", "command", "median s", "MiB/s (at median)", "fastest s", "slowest s"),
            "|---|---|---:|---:|---:|---:|"]
    for variant, values in r["stream"]:
        m = median(values)
        out.append(row(variant.name, f"`{variant.shown}`", f"{m:.2f}",
                       f"{STREAM_BYTES / MIB / m:.0f}", f"{min(values):.2f}",
                       f"{max(values):.2f}"))
    if "cpu" in r:
        out += ["", f"CPU per stream (utime+stime from /proc over the {runs} rounds, divided by "
                f"{runs}): the daemon {r['cpu']['daemon']:.2f} s, the ControlMaster's master "
                f"process {r['cpu']['master']:.2f} s (the multiplexing ssh client's own "
                "copying, like distsvc-run's none, not counted)."]
    return [*out, ""]


def report_queries(r: dict[str, Any]) -> list[str]:
    times = r["sequential"]
    n = len(times)
    out = ["### 3. Best-host queries", ""]
    out += [f"A daemon with the bed's {r['hosts']} hosts configured, all measured first "
            f"through it ({r['up']} up; `max_age = 3600`, so no query probes); each query is "
            "`distsvc.actions.client.query({\"type\": \"best\", \"config\": ...})`: one "
            "connection, one request, one answer.", ""]
    out += [row("queries", "clients", "median ms", "p99 ms", "max ms", "queries/s",
                "placements in the state afterwards"), "|---|---:|---:|---:|---:|---:|---:|"]
    out.append(row(f"{n} `best`, one after another", 1, ms(median(times)), ms(p99(times)),
                   ms(max(times)), f"{n / r['sequential_wall']:.0f}", r["placements_after"]))
    for key, label in (("status_concurrent", "status"), ("best_concurrent", "best")):
        wall, values = r[key]
        extra = r["placements_after_concurrent"] if label == "best" else "-"
        out.append(row(f"{len(values)} `{label}`, {r['clients']} processes at once",
                       r["clients"], ms(median(values)), ms(p99(values)), ms(max(values)),
                       f"{len(values) / wall:.0f}", extra))
    if "best_paced" in r:
        wall, values = r["best_paced"]
        out.append(row(f"{len(values)} `best`, {r['clients']} processes paced to "
                       f"{r['paced_rate']:.0f}/s in all (open loop; latency from each "
                       "query's due time)", r["clients"], ms(median(values)), ms(p99(values)),
                       ms(max(values)), f"{len(values) / wall:.0f}",
                       r["placements_after_concurrent"]))
        closed = len(r["best_concurrent"][1]) / r["best_concurrent"][0]
        met = closed >= 5000 and p99(values) <= 0.002
        out += ["", f"**Goal (>= 5,000/s closed loop with {r['clients']} clients, p99 <= 2 ms "
                f"at 5,000/s): {'met' if met else 'not met'}.** "
                f"{closed:.0f}/s closed loop; p99 {ms(p99(values))} ms paced to "
                f"{r['paced_rate']:.0f}/s."]
    if "best_concurrent_daemon_cpu" in r:
        out += ["", "The daemon's CPU per `best` in the closed-loop row: "
                f"{r['best_concurrent_daemon_cpu'] / len(r['best_concurrent'][1]) * 1e6:.0f} us "
                "(user + system, from /proc)."]
    cap = r.get("anonymous_cap")
    out += ["", "Latency of the sequential `best` queries as the run goes on (every answer "
            "records an anonymous placement on its host that counts for 60 s"
            + (f", at most {cap} per host" if cap else "") + "; the state file, which "
            f"the daemon writes behind, was {r['state_bytes_after'] / 1024:.0f} KiB at "
            "the end):", ""]
    buckets = 8
    size = math.ceil(n / buckets)
    out += [row("queries", "median ms", "p99 ms"), "|---|---:|---:|"]
    for first in range(0, n, size):
        chunk = times[first:first + size]
        out.append(row(f"{first + 1}-{first + len(chunk)}", ms(median(chunk)), ms(p99(chunk))))
    out += ["", "The concurrent `status` and `best` rows ran against a second daemon with a "
            "fresh state, `status` first (it reads the state file too).", ""]
    return out


def report_cold(r: dict[str, Any], c: dict[str, Any]) -> list[str]:
    def cells(values: Sequence[float]) -> list[str]:
        return [ms(median(values)), ms(min(values)), ms(max(values))]

    runs = len(r["answered"])
    out = [f"### 4. Cold start: from nothing running to the first answer ({runs} runs each)", ""]
    out += [row("path", "what is timed", "median ms", "fastest ms", "slowest ms"),
            "|---|---|---:|---:|---:|"]
    out.append(row("(a) daemon started as a subprocess", "`Popen(distsvc daemon)` until a "
                   "status query (polled every 2 ms) is answered", *cells(r["answered"])))
    out.append(row("(a) then `distsvc status`", "the CLI against the daemon just started",
                   *cells(r["status_cli"])))
    out.append(row("(a) stopping it", "SIGTERM until the daemon has exited",
                   *cells(r["stopped"])))
    out.append(row("(a) what a user meets first", "`distsvc-run true` with no daemon: runs "
                   "in-process and spawns one", *cells(r["first_run"])))
    out.append(row("(a) ... and the daemon it spawned", "from that distsvc-run's start until "
                   "the spawned daemon answers", *cells(r["spawned_ready"])))
    if "skipped" in c:
        out.append(row("(b) socket activation", f"skipped: {c['skipped']}", "-", "-", "-"))
    else:
        t = c["times"]
        out.append(row("(b) socket activation", "`distsvc status --json` with only "
                       "distsvc.socket listening (service stopped)", *cells(t["cli_cold"])))
        out.append(row("(b) same, service running", "`distsvc status --json` right after",
                       *cells(t["cli_warm"])))
        out.append(row("(b) socket activation, query only", "one status query made in-process "
                       "(no client start-up), service stopped", *cells(t["query_cold"])))
        out.append(row("(b) same, service running", "the same query right after",
                       *cells(t["query_warm"])))
        if "run_cold" in t:
            ratio = median(t["run_cold"]) / median(t["ssh_fresh"])
            out.append(row("(b) socket activation, first command", "`distsvc-run true` to "
                           f"the container's sshd, service stopped: {ratio:.2f}x a fresh ssh",
                           *cells(t["run_cold"])))
            out.append(row("(b) same, service running", "`distsvc-run true` right after",
                           *cells(t["run_warm"])))
            out.append(row("(b) a fresh `ssh host true`", "OpenSSH to the same sshd, in the "
                           "same rounds", *cells(t["ssh_fresh"])))
    imports = r["daemon_imports"]
    out += ["", f"The daemon imports `distsvc.daemon.handlers` (which loads paramiko): "
            f"{imports.module:.1f} ms cumulative (`python -X importtime`, median of 5; "
            f"heaviest: {', '.join(f'{n} {t:.1f}' for n, t in imports.heaviest)})."]
    if "skipped" not in c:
        pids = c["pids"]
        out += [f"(b) ran in the systemd-nspawn container of `tests/container.py` (booted in "
                f"{c['boot']:.1f} s, system {c['state']}), as its lingering test user, with "
                "`systemd/distsvc.socket` and `systemd/distsvc.service` installed as user "
                "units (ExecStart pointing at this venv), timed inside by "
                f"`bench/cold_start_inside.py`; {len(set(pids))} distinct daemon PIDs for "
                f"{len(pids)} cold calls. Its one host is its own sshd (tests/container.py "
                "`booted_with_sshd`, 127.0.0.1:2222 inside), measured once before. Between "
                "rounds the service is stopped and `systemctl --user reset-failed` flushes "
                "systemd's start rate limit (5 starts in 10 s), which these back-to-back "
                "cold starts would hit."]
        if "run_cold" in c["times"]:
            cold, fresh = median(c["times"]["run_cold"]), median(c["times"]["ssh_fresh"])
            out += ["", f"**The first command through socket activation: {ms(cold)} ms, "
                    f"{cold / fresh:.2f}x a fresh `ssh host true` to the same sshd in the same "
                    f"rounds ({ms(fresh)} ms; goal at most {COLD_GOAL}x).** It is the client's "
                    "start-up, the activation, the daemon's start, its first SSH handshake and "
                    "`true` on the host."]
    return [*out, ""]


def report_scan(r: dict[str, Any]) -> list[str]:
    states = ", ".join(f"{n} {state}" for state, n in r["states"].most_common())
    out = [f"### 5. `distsvc scan` of {r['hosts']} hosts", ""]
    out += [f"{r['hosts']} `[[hosts]]` on 127.0.1.1-127.0.1.{r['hosts']}, one port, served by "
            f"{math.ceil(r['hosts'] / LISTEN_PER_SSHD)} sshd processes (OpenSSH listens on at "
            f"most {LISTEN_PER_SSHD} addresses each), `MaxStartups 300:30:600`, "
            "`MaxSessions 300`; default settings (`probe_timeout = 2`, at most 32 probes at "
            "once); no state, so one pass measures every host.", ""]
    out += [row("wall s", "client CPU s (user + sys)", "client max RSS MiB",
                "servers' CPU s", "hosts up"), "|---:|---:|---:|---:|---|"]
    out.append(row(f"{r['wall']:.2f}", f"{r['user'] + r['sys']:.2f} ({r['user']:.2f} + "
                   f"{r['sys']:.2f})", f"{r['maxrss'] / 1024:.0f}", f"{r['server_cpu']:.2f}",
                   states))
    if r["errors"]:
        out += ["", "Not up: " + "; ".join(f"{n}x {e}" for e, n in r["errors"]) + "."]
    return [*out, ""]


def memory_rows(r: dict[str, Any], when: Sequence[tuple[str, str]]) -> list[str]:
    """A table of the /proc/PID/status taken at each (key, label) of `when`."""
    out = [row("when", "VmRSS MiB", "VmHWM MiB", "threads"), "|---|---:|---:|---:|"]
    for key, label in when:
        status = r[key]
        out.append(row(label, f"{kib(status['VmRSS']) / 1024:.1f}",
                       f"{kib(status['VmHWM']) / 1024:.1f}", status["Threads"]))
    return out


def report_memory(r: dict[str, Any]) -> list[str]:
    out = [f"### 6. The daemon's memory with {r['hosts']} hosts configured", ""]
    out += memory_rows(r, (("before", "idle, 1 s after start"),
                           ("after", f"after one `hosts --refresh` through it "
                                     f"({r['connections']} pooled connections held)"),
                           ("settled", "5 s later")))
    out += ["", f"The first refresh through the daemon (a `hosts` request with `refresh`, "
            f"connecting to every host) took {r['refresh_wall']:.2f} s and "
            f"{r['refresh_cpu']:.2f} s of the daemon's CPU ({r['rows_up']} hosts up); the same "
            f"request again, over the warm connections, {r['warm_wall']:.2f} s and "
            f"{r['warm_cpu']:.2f} s of CPU ({r['warm_up']} up).", ""]
    return out


def report_throughput(r: dict[str, Any]) -> list[str]:
    results: dict[str, Concurrent] = r["results"]
    cpus = r["cpus"]
    out = ["### 3b. `best` throughput from raw-socket clients", ""]
    out += [f"A fresh daemon with the bed's {r['hosts']} hosts, all measured first through it "
            f"({r['up']} up). Each client is a forked process looping on one pre-encoded "
            "request frame over a new unix socket connection per query (`common.raw_query`: "
            "no distsvc client, no JSON decoding), so the clients cost as little as any "
            "client could; they still share the machine's "
            f"{cpus} CPUs with the daemon, so their own CPU and the daemon's are shown as "
            "shares of the CPU time the run had (wall x CPUs).", ""]
    out += [row("request", "clients", "queries", "queries/s", "median ms", "p99 ms", "max ms",
                "clients' CPU share", "daemon's CPU share"),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, c in results.items():
        budget = c.wall * cpus
        out.append(row(f"`{name}`", c.clients, len(c.latencies), f"{c.rate:.0f}",
                       ms(median(c.latencies)), ms(p99(c.latencies)), ms(max(c.latencies)),
                       f"{c.client_cpu / budget:.0%}", f"{c.daemon_cpu / budget:.0%}"))
    best, status = results["best"], results["status"]
    out += ["", f"`status` (an answer from memory) shows what the daemon's accept loop and "
            f"these clients reach together: {status.rate:.0f}/s; `best` reaches "
            f"{best.rate / status.rate:.0%} of that. Where the daemon's share nears one CPU "
            "(100% / CPUs) it is the bottleneck (one Python process, one GIL); where the "
            "clients' share is most of the rest, the machine is.", ""]
    return out


def report_burst(r: dict[str, Any], count: int) -> list[str]:
    calls: list[Call] = r["calls"]
    ok = sum(c.status == 0 for c in calls)
    wall = max(c.ended for c in calls) - min(c.started for c in calls)
    each = [c.ended - c.started for c in calls]
    singles = r["singles"]
    out = [f"### 3c. {count} concurrent `distsvc-run true` through one daemon", ""]
    out += [f"The bed's {r['hosts']} hosts at OpenSSH's defaults (MaxSessions 10, MaxStartups "
            f"10:30:100), measured first and warmed by one burst of the same size; then "
            f"{count} client processes started at once (one thread each, released by a "
            f"barrier). The daemon held {r['connections']} connections afterwards.", ""]
    out += [row("what", "ms"), "|---|---:|"]
    out += [row(f"single call alone, median of {len(singles)}", ms(median(singles))),
            row(f"single call alone, slowest of {len(singles)}", ms(max(singles))),
            row(f"{count} at once: wall, first start to last end", ms(wall)),
            row(f"{count} at once: each call, median", ms(median(each))),
            row(f"{count} at once: each call, slowest", ms(max(each))),
            row("daemon CPU per command (utime+stime delta / commands)",
                ms(r["daemon_cpu"] / count))]
    out += ["", f"{ok} of {count} succeeded (wall {wall / max(singles):.1f}x the slowest single "
            "call: the start-up of that many Python clients on 2 CPUs)." + (
                "" if ok == count else " Failures: " + "; ".join(
                    sorted({f"exit {c.status}: {c.error}" for c in calls if c.status})[:3])), ""]
    held, singles_held = r["held_calls"], r["held_singles"]
    held_ok = sum(c.status == 0 for c in held)
    held_wall = max(c.ended for c in held) - min(c.started for c in held)
    out += [f"The same with a command that lasts, `distsvc-run sleep {HELD_SECONDS:g}`: "
            f"{held_ok} of {count} succeeded; wall {ms(held_wall)} ms against "
            f"{ms(max(singles_held))} ms for the slowest of {len(singles_held)} alone "
            f"(**{held_wall / max(singles_held):.2f}x**, goal at most 1.5x): the daemon runs "
            "them side by side, opening connections beyond MaxSessions.", ""]
    return out


def report_rss(r: dict[str, Any]) -> list[str]:
    mib = r["bytes"] / MIB
    out = [f"### 2b. The daemon's memory with {r['hosts']} hosts, and after a "
           f"{mib / 1024:g} GiB stream", ""]
    streamed = r["streamed"]
    out += memory_rows(r, (("idle", "idle, warm (hosts measured, 5 commands run)"),
                           ("after", f"right after `distsvc-run head -c {r['bytes']} "
                                     f"/dev/zero` ({streamed.received / MIB / streamed.seconds:.0f}"
                                     " MiB/s)"),
                           ("settled", "5 s later")))
    if streamed.status != 0 or streamed.received != r["bytes"]:
        out += ["", f"**The stream failed:** {streamed.received} of {r['bytes']} bytes arrived, "
                f"exit status {streamed.status}: {streamed.error}"]
    return [*out, ""]


def goals(results: dict[str, Any], args: argparse.Namespace) -> list[Goal]:
    """Issue 9's goals, each from the figures of this run (None where a part was skipped)."""
    latency = results.get("latency", {})
    walls = {v.name: median(w) for v, w in latency.get("latency", [])}
    run, master, bare = (walls.get(k) for k in ("distsvc-run, warm daemon",
                                                "ssh, ControlMaster", "python -c pass"))
    out = []
    for what, other, limit in (("`distsvc-run true`, warm daemon, x ssh ControlMaster",
                                master, 3.5),
                               ("`distsvc-run true`, warm daemon, x `python -c pass`",
                                bare, 2.5)):
        if run and other:
            out.append(Goal(what, run / other, limit, unit="x",
                            shown=f"{ms(run)} / {ms(other)} ms = {run / other:.2f}x"))
        else:
            out.append(Goal(what, None, limit, unit="x"))
    cpu = {v.name: median(c) for v, c in latency.get("cpu", [])}
    client = cpu.get("distsvc-run, warm daemon")
    out.append(Goal("client CPU per warm call", client * 1000 if client else None, 15,
                    unit=" ms", shown=f"{ms(client)} ms" if client else ""))
    if "stream" in results:
        times = {v.name: median(t) for v, t in results["stream"]["stream"]}
        value = times["ssh, ControlMaster"] / times["distsvc-run, warm daemon"]
        out.append(Goal(f"{STREAM_BYTES // MIB} MiB stdout, throughput x ControlMaster", value,
                        0.85, at_least=True, unit="x"))
    else:
        out.append(Goal("200 MiB stdout, throughput x ControlMaster", None, 0.85, True, unit="x"))
    best = results["throughput"]["results"]["best"] if "throughput" in results else None
    out.append(Goal(f"`best`, {args.clients} concurrent clients, queries/s",
                    best.rate if best else None, 5000, at_least=True,
                    shown=f"{best.rate:.0f}" if best else ""))
    out.append(Goal(f"`best`, {args.clients} concurrent clients, p99",
                    p99(best.latencies) * 1000 if best else None, 2, unit=" ms",
                    shown=f"{ms(p99(best.latencies))} ms" if best else ""))
    container = results.get("container", {})
    if "run_cold" in container.get("times", {}):
        times = container["times"]
        cold, fresh = median(times["run_cold"]), median(times["ssh_fresh"])
        out.append(Goal("first command, socket activation, x a fresh ssh", cold / fresh,
                        COLD_GOAL, unit="x", shown=f"{ms(cold)} / {ms(fresh)} ms = "
                        f"{cold / fresh:.2f}x"))
    else:
        out.append(Goal("first command, socket activation, x a fresh ssh", None, COLD_GOAL,
                        unit="x"))
    if "burst" in results:
        b = results["burst"]
        calls: list[Call] = b["calls"]
        ok = sum(c.status == 0 for c in calls) + sum(c.status == 0 for c in b["held_calls"])
        held_wall = (max(c.ended for c in b["held_calls"])
                     - min(c.started for c in b["held_calls"]))
        out += [Goal(f"2 x {args.burst} concurrent `distsvc-run`: succeeded", ok,
                     2 * args.burst, at_least=True, shown=f"{ok} of {2 * args.burst}"),
                Goal(f"{args.burst} concurrent `distsvc-run sleep {HELD_SECONDS:g}`: wall x the "
                     "slowest alone", held_wall / max(b["held_singles"]), 1.5, unit="x",
                     shown=f"{ms(held_wall)} / {ms(max(b['held_singles']))} ms = "
                     f"{held_wall / max(b['held_singles']):.2f}x"),
                Goal("... daemon CPU per command", b["daemon_cpu"] / len(calls) * 1000, 3,
                     unit=" ms")]
    else:
        out += [Goal(f"{args.burst} concurrent `distsvc-run true`: succeeded", None,
                     args.burst, at_least=True),
                Goal("... wall x the slowest single call", None, 1.5, unit="x"),
                Goal("... daemon CPU per command", None, 3, unit=" ms")]
    scan = results.get("scan")
    out += [Goal(f"scan of {args.scan_hosts} hosts, no daemon: wall",
                 scan["wall"] if scan else None, 2.5, unit=" s"),
            Goal("... CPU", scan["user"] + scan["sys"] if scan else None, 1, unit=" s")]
    rss = results.get("rss")
    idle = kib(rss["idle"]["VmRSS"]) / 1024 if rss else None
    out.append(Goal("daemon RSS idle with 3 hosts, warm", idle, 40, unit=" MiB"))
    memory = results.get("memory")
    out.append(Goal(f"daemon RSS with {args.scan_hosts} warm connections",
                    kib(memory["after"]["VmRSS"]) / 1024 if memory else None, 70, unit=" MiB"))
    grown = kib(rss["after"]["VmRSS"]) / 1024 - idle if rss and idle is not None else None
    failed = rss and rss["streamed"].status != 0
    out.append(Goal(f"daemon RSS after a {args.big_stream_mib / 1024:g} GiB stream, "
                    "above idle", grown, 10, unit=" MiB",
                    shown=f"{grown:.2f} MiB (the stream exited {rss['streamed'].status})"
                    if failed and grown is not None else ""))
    return out


def report_goals(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    out = ["### Goals of issue 9", ""]
    out += ["Each from the figures above (this run); latency ratios and client CPU from part 1, "
            "`python -c pass` being the venv's interpreter.", ""]
    return [*out, *goal_rows(goals(results, args)), ""]


def report(info: dict[str, str], command: str, args: argparse.Namespace,
           results: dict[str, Any]) -> str:
    out = preamble(
        DOCS_HEADING,
        "Measured by `bench/daemon_bench.py` against the test bed's OpenSSH servers "
        "(`tests/sshbed.py`; h1 on 127.0.0.2 for parts 1-2 and 4a), every client with a "
        "clean home and its runtime directory on a tmpfs. Figures are wall times "
        "(`time.perf_counter`) of whole client processes unless a row says otherwise; "
        "`ssh` gets `-F /dev/null` and its key and known_hosts explicitly.", command, info)
    if "latency" in results:
        out += report_latency(results["latency"], args.runs)
    if "stream" in results:
        out += report_stream(results["stream"], args.stream_runs)
    if "rss" in results:
        out += report_rss(results["rss"])
    if "queries" in results:
        out += report_queries(results["queries"])
    if "throughput" in results:
        out += report_throughput(results["throughput"])
    if "burst" in results:
        out += report_burst(results["burst"], args.burst)
    if "cold" in results:
        out += report_cold(results["cold"], results.get("container", {"skipped": "--skip"}))
    if "scan" in results:
        out += report_scan(results["scan"])
    if "memory" in results:
        out += report_memory(results["memory"])
    out += report_goals(results, args)
    return "\n".join(out)


# --- main ------------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    results: dict[str, Any] = {}
    observed = []
    loads = []
    described = machine()  # before: the code measured is the working tree at the start
    with setting(args, "distsvc-bench-", observed) as s:
        def run(part: str, function: Any, *extra: Any) -> None:
            if part in args.skip:
                return
            loads.append(f"{part} {load_now()}")
            started = time.perf_counter()
            results[part] = function(s, *extra)
            print(f"{part}: {time.perf_counter() - started:.1f} s", file=sys.stderr)

        run("latency", part_latency)
        run("stream", part_stream)
        run("rss", part_rss)
        run("queries", part_queries)
        run("throughput", part_throughput)
        run("burst", part_burst)
        run("cold", part_cold)
        run("container", part_container)
        if not {"scan", "memory"} <= set(args.skip):
            addresses = [f"127.0.1.{i}" for i in range(1, args.scan_hosts + 1)]
            with many_hosts(s.bed, addresses, max_startups="300:30:600",
                            max_sessions=300) as (hosts, sshd):
                run("scan", part_scan, hosts, sshd)
                run("memory", part_memory, hosts)
    pgrep = subprocess.run(["pgrep", "-af", "sshd -D|distsvc daemon"], capture_output=True,
                           text=True).stdout.strip()
    print("after the run, `pgrep -af 'sshd -D|distsvc daemon'` (none of them ours): "
          + (pgrep or "nothing"), file=sys.stderr)
    info = {**described, "tmpfs for runtime directories": str(TMPFS),
            "conditions": "; ".join(observed),
            "load average (1, 5, 15 min) when each part started": "; ".join(loads)}
    return results, info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="calls per latency variant")
    parser.add_argument("--stream-runs", type=int, default=5, help="runs per streaming path")
    parser.add_argument("--queries", type=int, default=2000, help="sequential best queries")
    parser.add_argument("--clients", type=int, default=32, help="concurrent query clients")
    parser.add_argument("--client-queries", type=int, default=40,
                        help="best queries per concurrent client")
    parser.add_argument("--paced-rate", type=float, default=5000.0,
                        help="total best queries/s of the open-loop latency run (part 3)")
    parser.add_argument("--paced-seconds", type=float, default=2.0,
                        help="how long the open-loop latency run lasts (part 3)")
    parser.add_argument("--status-queries", type=int, default=100,
                        help="status queries per concurrent client")
    parser.add_argument("--raw-queries", type=int, default=200,
                        help="queries per raw-socket client (part throughput)")
    parser.add_argument("--burst", type=int, default=100,
                        help="concurrent distsvc-run calls (part burst)")
    parser.add_argument("--big-stream-mib", type=int, default=1024,
                        help="MiB streamed through the daemon before its RSS (part rss)")
    parser.add_argument("--cold-runs", type=int, default=10, help="runs per cold-start path")
    parser.add_argument("--scan-hosts", type=int, default=200, help="hosts for parts 5 and 6")
    parser.add_argument("--skip", action="append", default=[], choices=PARTS,
                        help="leave a part out (then docs are not written)")
    parser.add_argument("--no-docs", action="store_true",
                        help=f"only print; do not update {DOCS.relative_to(ROOT)}")
    args = parser.parse_args()
    if min(args.runs, args.stream_runs, args.queries, args.clients, args.client_queries,
           args.status_queries, args.cold_runs, args.raw_queries, args.burst,
           args.big_stream_mib) < 1 or not 1 <= args.scan_hosts <= 254:
        parser.error("counts must be at least 1, --scan-hosts at most 254")
    reason = sshbed.can_run()
    if reason:
        print(f"daemon_bench: {reason}", file=sys.stderr)
        return 2
    raise_fd_limit(4096)  # 200 hosts, many clients
    command = shlex.join([".venv/bin/python", "bench/daemon_bench.py", *sys.argv[1:]])
    results, info = bench(args)
    section = report(info, command, args, results)
    publish(DOCS_HEADING, section, not args.no_docs, bool(args.skip))
    return 0


if __name__ == "__main__":
    sys.exit(main())
