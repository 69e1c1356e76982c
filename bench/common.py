"""Helpers shared by the benchmark scripts (run_bench.py, daemon_bench.py, scaling_bench.py).

What lives here: statistics, clean client homes and configs made the way tests/conftest.py's
Client makes them, `ssh` command lines that ignore every ~/.ssh, a ControlMaster context,
timing one call or one 200 MiB stream, `python -X
importtime` parsing, a daemon started as a client spawns it and requests spoken to it
directly, many hosts on loopback addresses, concurrent raw-socket clients, growth and goal
tables, the machine description, the quiet-machine check, and replacing one generated
section of docs/benchmarks.md. Importing this module puts tests/ on sys.path (for sshbed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import math
import multiprocessing
import os
import platform
import re
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import distsvc  # noqa: E402  (the venv's; identity() goes into raw frames)
import distsvc.actions.client  # noqa: E402
import distsvc.adapters.unix  # noqa: E402
import distsvc.config  # noqa: E402
import distsvc.protocol  # noqa: E402
import sshbed  # noqa: E402  (lives in tests/, hence the path above)

VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = VENV_BIN / "python"
DISTSVC = VENV_BIN / "distsvc"
DISTSVC_RUN = VENV_BIN / "distsvc-run"
DOCS = ROOT / "docs" / "benchmarks.md"

STREAM_BYTES = 200 * 1024 * 1024
STREAM_COMMAND = f"head -c {STREAM_BYTES} /dev/zero"
MIB = 1024 * 1024
TMPFS = Path("/dev/shm")  # for runtime directories: a tmpfs, like /run/user/UID
LISTEN_PER_SSHD = 16  # OpenSSH's MAX_LISTEN_SOCKS
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- statistics ------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0 < q < 1) with linear interpolation between the closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def p90(values: Sequence[float]) -> float:
    return quantile(values, 0.9)


def p99(values: Sequence[float]) -> float:
    return quantile(values, 0.99)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# --- clients ---------------------------------------------------------------------------------


def client_home(bed: sshbed.Bed, home: Path, daemon: bool,
                hosts: Iterable[sshbed.Host] | None = None,
                runtime: Path | None = None) -> dict[str, str]:
    """A user's home as tests/conftest.py's Client makes it: key, known_hosts, runtime dir.

    Returns the environment to run distsvc with; no config file is written here. Without
    `daemon` the environment has DISTSVC_DAEMON=off: clients work in-process and never start
    a daemon. With it, clients use a daemon serving this home's runtime directory, and start
    one if none answers, so the caller must have started one.
    `hosts` (default: the bed's) go into known_hosts. `runtime` is XDG_RUNTIME_DIR (made
    0700; default HOME/run): where the daemon's socket and the state file live.
    """
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700, parents=True)
    key = ssh / "id_ed25519"
    key.write_bytes(bed.client_key.read_bytes())
    key.chmod(0o600)
    known = bed.hosts if hosts is None else hosts
    (ssh / "known_hosts").write_text("".join(h.known_hosts_line + "\n" for h in known))
    runtime = runtime or home / "run"
    runtime.mkdir(mode=0o700)
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_RUNTIME_DIR": str(runtime),
        "LANG": "C.UTF-8",
        "PWD": str(bed.home),  # the directory distsvc-run runs in; it exists on the host
    }
    if not daemon:
        env["DISTSVC_DAEMON"] = "off"
    return env


def config_path(env: dict[str, str]) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) / "distsvc" / "config.toml"


def write_config(env: dict[str, str], bed: sshbed.Bed, hosts: Sequence[sshbed.Host],
                 max_age: float | None, extra: Sequence[str] = ()) -> Path:
    """config.toml naming `hosts` (logging in as the bed's user), with `max_age` and any
    `extra` top-level lines (e.g. "probe_timeout = 10")."""
    lines = [f"max_age = {max_age}"] if max_age is not None else []
    lines += list(extra)
    for host in hosts:
        lines += ["[[hosts]]", f'name = "{host.name}"', f'address = "{host.address}"',
                  f"port = {host.port}", f'user = "{bed.user}"']
    path = config_path(env)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def ssh_command(bed: sshbed.Bed, host: sshbed.Host, home: Path, *options: str) -> list[str]:
    """`ssh` with nothing from any ~/.ssh or /etc/ssh/ssh_config: all options explicit."""
    known_hosts = home / "known_hosts"
    if not known_hosts.exists():
        known_hosts.write_text(host.known_hosts_line + "\n")
    return ["ssh", "-F", "/dev/null", "-p", str(host.port), "-i", str(bed.client_key),
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", *options,
            f"{bed.user}@{host.address}"]


def ssh_env(home: Path) -> dict[str, str]:
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8"}


@contextlib.contextmanager
def control_master(ssh: list[str], env: dict[str, str], path: Path) -> Iterator[list[str]]:
    """An open ControlMaster connection; yields the ssh command line that uses it."""
    log = path.with_suffix(".log")
    with open(log, "wb") as err:
        # -f backgrounds the master; its stdout/stderr must not be pipes we wait on.
        subprocess.run([*ssh[:-1], "-o", "ControlMaster=yes", "-o", f"ControlPath={path}",
                        "-o", "ControlPersist=yes", "-fN", ssh[-1]], env=env, check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                       timeout=30)
    muxed = [*ssh[:-1], "-o", f"ControlPath={path}", "-o", "ControlMaster=no", ssh[-1]]
    try:
        check_master(muxed, env)
        yield muxed
        check_master(muxed, env)  # still the master answering, not silent fresh connections
    finally:
        subprocess.run([*muxed[:-1], "-O", "exit", muxed[-1]], env=env, capture_output=True,
                       timeout=30)
        # `-O exit` answers once the master was told; it removes its socket as it exits.
        deadline = time.monotonic() + 10
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if path.exists():
            raise RuntimeError(f"the ControlMaster at {path} did not exit within 10 s")


def check_master(muxed: list[str], env: dict[str, str]) -> int:
    """The running ControlMaster's PID (`ssh -O check` says `Master running (pid=N)`)."""
    result = subprocess.run([*muxed[:-1], "-O", "check", muxed[-1]], env=env,
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ControlMaster not running: {result.stderr.strip()}")
    return int(result.stderr.rpartition("pid=")[2].rstrip(")\n"))


# --- measurements ----------------------------------------------------------------------------


@dataclasses.dataclass
class Variant:
    name: str
    shown: str  # the command as the report shows it
    argv: list[str]
    env: dict[str, str]


def time_call(argv: Sequence[str], env: dict[str, str], cwd: Path,
              timeout: float = 60) -> float:
    """Seconds for one call of argv with stdin at end-of-file; it must succeed."""
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=timeout)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {result.returncode}: "
                           f"{result.stderr.decode(errors='replace').strip()}")
    return elapsed


@dataclasses.dataclass
class Streamed:
    received: int  # bytes of stdout
    seconds: float
    status: int
    error: str  # stderr


def stream_call(argv: Sequence[str], env: dict[str, str], cwd: Path,
                timeout: float = 300) -> Streamed:
    """Read all of argv's stdout (counted, not kept); what came and how it ended."""
    buffer = bytearray(MIB)
    received = 0
    started = time.perf_counter()
    with subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0) as process:
        assert process.stdout is not None and process.stderr is not None
        while count := process.stdout.readinto(buffer):
            received += count
        status = process.wait(timeout=timeout)
        elapsed = time.perf_counter() - started
        error = process.stderr.read().decode(errors="replace").strip()
    return Streamed(received, elapsed, status, error)


def time_stream(argv: Sequence[str], env: dict[str, str], cwd: Path) -> float:
    """Seconds to read all of argv's stdout, which must be exactly STREAM_BYTES long."""
    done = stream_call(argv, env, cwd)
    if done.status != 0 or done.received != STREAM_BYTES:
        raise RuntimeError(f"{shlex.join(argv)}: exit {done.status}, {done.received} bytes: "
                           f"{done.error}")
    return done.seconds


def timed_scan(env: dict[str, str], log: Path) -> tuple[float, resource.struct_rusage]:
    """`distsvc scan` in-process (no daemon), which must succeed: wall seconds and its
    rusage (wait4)."""
    with open(log, "ab") as out:
        started = time.perf_counter()
        process = subprocess.Popen([str(DISTSVC), "scan"], env=env, cwd="/",
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"distsvc scan exited {process.returncode}; see {log}")
    return wall, usage


def latency_rounds(variants: Sequence[Variant], cwd: Path, runs: int,
                   timeout: float = 60) -> list[tuple[Variant, list[float]]]:
    """`runs` timed calls of every variant, one of each per round, after one warm-up call."""
    times: list[tuple[Variant, list[float]]] = [(v, []) for v in variants]
    for variant in variants:
        time_call(variant.argv, variant.env, cwd, timeout)
    for _ in range(runs):
        for variant, values in times:
            values.append(time_call(variant.argv, variant.env, cwd, timeout))
    return times


def stream_rounds(variants: Sequence[Variant], cwd: Path,
                  runs: int) -> list[tuple[Variant, list[float]]]:
    times: list[tuple[Variant, list[float]]] = [(v, []) for v in variants]
    for _ in range(runs):
        for variant, values in times:
            values.append(time_stream(variant.argv, variant.env, cwd))
    return times


IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")


@dataclasses.dataclass
class ImportTimes:
    total: float  # ms: every import's own time summed, interpreter start-up's included
    module: float  # ms: importing the module itself (cumulative)
    paramiko: bool  # whether paramiko was loaded
    heaviest: list[tuple[str, float]]  # (name, ms) of what distsvc code imports itself


def direct_imports(rows: list[re.Match[str]]) -> dict[str, float]:
    """Cumulative ms of each non-distsvc import made by a distsvc module.

    -X importtime prints a module after everything it imports, indented one step less, so
    a row's importer is the first later row that is indented less.
    """
    found = {}
    for index, row in enumerate(rows):
        depth = len(row[3])
        importer = next((r for r in rows[index + 1:] if len(r[3]) < depth), None)
        if (importer is not None and importer[4].startswith("distsvc")
                and not row[4].startswith("distsvc")):
            found[row[4]] = int(row[2]) / 1000
    return found


def import_times(module: str, runs: int = 7) -> ImportTimes:
    """`python -X importtime -c 'import MODULE'`, medians over `runs` fresh interpreters."""
    totals, cumulative, direct = [], [], []
    loaded = False
    for _ in range(runs):
        result = subprocess.run([str(PYTHON), "-X", "importtime", "-c", f"import {module}"],
                                capture_output=True, text=True, check=True, cwd=ROOT,
                                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        rows = [m for m in map(IMPORT_LINE.match, result.stderr.splitlines()) if m]
        totals.append(sum(int(m[1]) for m in rows) / 1000)
        cumulative.append(next(int(m[2]) for m in rows if m[4] == module) / 1000)
        loaded = loaded or any(m[4] == "paramiko" for m in rows)
        direct.append(direct_imports(rows))
    names = set().union(*direct)
    heaviest = sorted(((name, median([d.get(name, 0.0) for d in direct])) for name in names),
                      key=lambda item: -item[1])[:4]
    return ImportTimes(median(totals), median(cumulative), loaded, heaviest)


# --- the daemon ------------------------------------------------------------------------------


def socket_path(env: dict[str, str]) -> Path:
    return Path(env["XDG_RUNTIME_DIR"]) / "distsvc" / distsvc.adapters.unix.SOCKET_NAME


def wait_until_answering(env: dict[str, str], process: subprocess.Popen[bytes] | None,
                         started: float, timeout: float = 30.0) -> float:
    """Seconds from `started` until the daemon answers a status query (polled every 2 ms)."""
    while True:
        try:
            distsvc.actions.client.query({"type": "status"}, env)
            return time.perf_counter() - started
        except distsvc.actions.client.Unavailable:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the daemon exited with {process.returncode}") from None
            if time.perf_counter() - started > timeout:
                raise
            time.sleep(0.002)


def terminate(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM and wait up to `grace` seconds; a daemon that ignores it is killed, and that
    is the run's failure."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise RuntimeError(f"daemon {process.pid} ignored SIGTERM for {grace:g} s") from None


def stop_daemon(process: subprocess.Popen[bytes], env: dict[str, str]) -> None:
    """SIGTERM and wait; the daemon notices within its accept timeout (1 s) and removes its
    socket."""
    terminate(process, 20)
    if socket_path(env).exists():
        raise RuntimeError(f"daemon {process.pid} left its socket {socket_path(env)}")


@contextlib.contextmanager
def daemon(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`distsvc daemon` as a client spawns it (its environment, cwd /), answering queries."""
    with open(log, "ab") as err:
        process = subprocess.Popen([str(DISTSVC), "daemon"], env=env, cwd="/",
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=err)
    try:
        wait_until_answering(env, process, time.perf_counter())
        yield process
    finally:
        stop_daemon(process, env)


def request(env: dict[str, str], message: dict[str, Any], fds: Sequence[int] = (),
            timeout: float = 60.0) -> list[dict[str, Any]]:
    """One request, speaking the protocol directly (4-byte big-endian length + JSON, fds
    passed with the first bytes): every message up to the answer or the `exit` message."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(str(socket_path(env)))
        distsvc.adapters.unix.send(sock, message, fds)
        reader = distsvc.adapters.unix.Reader(sock)
        messages = []
        while (received := reader.receive()) is not None:
            messages.append(received)
            if "ok" in received or received.get("type") == "exit":
                if received.get("ok") is False:
                    raise RuntimeError(f"daemon: {received.get('error')}")
                return messages
        raise RuntimeError(f"the daemon closed the connection after {messages}")
    finally:
        sock.close()


def config_mapping(env: dict[str, str]) -> dict[str, Any]:
    """The client's configuration as a client sends it in its requests."""
    config = distsvc.config.load(None, env)
    return distsvc.config.to_mapping(config)


def refresh_through(env: dict[str, str], timeout: float = 300.0) -> list[dict[str, Any]]:
    """`hosts --refresh` through the daemon: it measures every host over its own pool."""
    answer = request(env, {"type": "hosts", "config": config_mapping(env), "refresh": True},
                     timeout=timeout)[-1]
    rows: list[dict[str, Any]] = answer["rows"]
    return rows


@dataclasses.dataclass
class Setting:
    """What every part of a benchmark gets: the bed, where homes and runtime dirs go."""
    bed: sshbed.Bed
    tmp: Path  # homes, logs (on disk)
    runtime: Path  # runtime directories (on a tmpfs)
    args: Any  # the script's argparse.Namespace

    def home(self, name: str, daemon: bool, hosts: Sequence[sshbed.Host] | None = None,
             max_age: float | None = 3600, extra: Sequence[str] = ()) -> dict[str, str]:
        """A fresh client home `name` with a config naming `hosts` (default: h1)."""
        hosts = [self.bed.hosts[0]] if hosts is None else hosts
        env = client_home(self.bed, self.tmp / name, daemon, hosts=hosts,
                          runtime=self.runtime / name)
        write_config(env, self.bed, hosts, max_age=max_age, extra=extra)
        return env

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"


@contextlib.contextmanager
def setting(args: Any, prefix: str, observed: list[str]) -> Iterator[Setting]:
    """A test bed of 4 hosts and temporary directories (homes on disk, runtime directories
    on the tmpfs) for one run; `observed` gets the machine's conditions before and after.
    Fails afterwards if a process of ours (sshd of the bed, anything naming our paths) is
    left."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, \
            tempfile.TemporaryDirectory(prefix=prefix, dir=TMPFS) as runtime, \
            sshbed.running(4) as bed:
        markers = [tmp, runtime, str(bed.root)]
        observed.append(f"before: {conditions(bed.root)}")
        Path(tmp).chmod(0o700)
        yield Setting(bed, Path(tmp), Path(runtime), args)
        observed.append(f"after: {conditions(bed.root)}")
        bed_root = bed.root
    left = stray_sshd(bed_root) + ours(markers)
    if left:
        raise RuntimeError(f"processes left behind: {left}")


# --- processes -------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


def kib(value: str) -> int:
    return int(value.split()[0])


def rss_mib(pid: int) -> float:
    return kib(proc_status(pid)["VmRSS"]) / 1024


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime+stime of a process from /proc/PID/stat (plus its waited-for children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    own = int(fields[11]) + int(fields[12])
    reaped = int(fields[13]) + int(fields[14]) if children else 0
    return (own + reaped) / CLK_TCK


def ours(markers: Sequence[str]) -> list[str]:
    """Processes whose command line or environment names one of our temporary paths."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if any(m in cmdline or m in environ for m in markers):
            found.append(f"{entry.name} {cmdline.strip()}")
    return found


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards `wanted` (children inherit it); the new one."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


# --- many hosts ------------------------------------------------------------------------------


def sshd_groups(addresses: Sequence[str], interleave: bool) -> list[list[str]]:
    """Addresses split over sshd processes of at most LISTEN_PER_SSHD addresses each: in
    runs of consecutive addresses, or dealt out in turn (`interleave`), so that hosts next
    to each other in a config, which a scan probes at the same time, are served by
    different processes (each process's MaxStartups then meets one handshake at a time)."""
    count = math.ceil(len(addresses) / LISTEN_PER_SSHD)
    if interleave:
        return [list(addresses[i::count]) for i in range(count)]
    return [list(addresses[i:i + LISTEN_PER_SSHD])
            for i in range(0, len(addresses), LISTEN_PER_SSHD)]


@contextlib.contextmanager
def many_hosts(bed: sshbed.Bed, addresses: Sequence[str], interleave: bool = False,
               max_startups: str | None = None, max_sessions: int | None = None,
               ) -> Iterator[tuple[list[sshbed.Host], list[int]]]:
    """A host on each of `addresses` (one port): sshd processes of up to 16 ListenAddress
    each (sshd_groups), with the settings of tests/sshbed.py (OpenSSH's MaxStartups and
    MaxSessions unless given) and the bed's first host key, user and authorized_keys.
    Yields the hosts (m001, m002, ... in the order of `addresses`) and the sshd PIDs."""
    port = sshbed.free_port(addresses[0])
    key = bed.root / "hostkey-h1"  # written by sshbed for its first host
    settings = sshbed.sshd_settings(bed.root, bed.user, key, max_startups=max_startups,
                                    max_sessions=max_sessions)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with open(bed.root / "sshd-many.log", "ab") as log:
            for index, group in enumerate(sshd_groups(addresses, interleave)):
                config = bed.root / f"sshd-many-{index}.conf"
                config.write_text("".join(f"ListenAddress {a}:{port}\n" for a in group)
                                  + settings)
                processes.append(subprocess.Popen(
                    [sshbed.SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                    stderr=log))
        for address in addresses:
            sshbed.wait_for_banner(address, port)
        hosts = [sshbed.Host(f"m{i:03d}", a, port, bed.hosts[0].host_key, bed.root)
                 for i, a in enumerate(addresses, 1)]
        yield hosts, [p.pid for p in processes]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)


def servers_cpu(pids: Sequence[int]) -> float:
    """CPU seconds of the sshd listeners and their finished connections (reaped children)."""
    return sum(cpu_seconds(pid, children=True) for pid in pids)


# --- raw clients -----------------------------------------------------------------------------


def frame(message: dict[str, Any]) -> bytes:
    """A request encoded once, as distsvc's client sends it (with this installation's
    identity, so the daemon does not retire)."""
    return bytes(distsvc.protocol.encode({"client": distsvc.identity(), **message}))


def raw_query(path: str, data: bytes) -> bytes:
    """One connection, one pre-encoded request, its whole answer frame (no JSON decoding):
    the least a client can do, so a loop of these measures the daemon, not the client."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(30)
        sock.connect(path)
        sock.sendall(data)
        answer = b""
        while len(answer) < 4 or len(answer) < 4 + int.from_bytes(answer[:4], "big"):
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"the daemon closed the connection after {answer[:200]!r}")
            answer += chunk
        if b'"ok":true' not in answer[4:40] and b'"ok": true' not in answer:
            raise RuntimeError(f"the daemon answered {answer[4:300]!r}")
        return answer
    finally:
        sock.close()


def _raw_worker(path: str, data: bytes, count: int, barrier: Any, results: Any) -> None:
    """One concurrent client (a forked process): `count` raw queries, then its latencies
    and its own CPU seconds."""
    try:
        barrier.wait()
        times = []
        for _ in range(count):
            started = time.perf_counter()
            raw_query(path, data)
            times.append(time.perf_counter() - started)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        results.put((times, usage.ru_utime + usage.ru_stime))
    except BaseException as error:  # the parent must hear of it, not wait forever
        results.put(repr(error))


@dataclasses.dataclass
class Concurrent:
    """What `clients` concurrent raw clients measured."""
    clients: int
    wall: float  # seconds from the barrier to the last answer
    latencies: list[float]  # every query's seconds
    client_cpu: float  # the client processes' CPU seconds, summed
    daemon_cpu: float  # the daemon's CPU seconds over the run (when its PID was given)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall


def concurrent_raw(path: Path, data: bytes, clients: int, each: int,
                   daemon_pid: int | None = None) -> Concurrent:
    """`clients` forked processes each making `each` raw queries at once (raw_query)."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(clients + 1)
    results = context.Queue()
    workers = [context.Process(target=_raw_worker, args=(str(path), data, each, barrier,
                                                         results)) for _ in range(clients)]
    for worker in workers:
        worker.start()
    cpu_before = cpu_seconds(daemon_pid) if daemon_pid else 0.0
    barrier.wait()
    started = time.perf_counter()
    collected = [results.get(timeout=600) for _ in workers]
    wall = time.perf_counter() - started
    daemon_cpu = cpu_seconds(daemon_pid) - cpu_before if daemon_pid else 0.0
    for worker in workers:
        worker.join(30)
    failed = [c for c in collected if isinstance(c, str)]
    if failed:
        raise RuntimeError(f"{len(failed)} raw clients failed: {failed[0]}")
    return Concurrent(clients, wall, [t for times, _ in collected for t in times],
                      sum(cpu for _, cpu in collected), daemon_cpu)


# --- concurrent commands ---------------------------------------------------------------------


@dataclasses.dataclass
class Call:
    started: float
    ended: float
    status: int
    error: str


CALL_TIMEOUT = 120.0  # seconds a burst's call may take before it is killed as hung


def burst(argv: Sequence[str], env: dict[str, str], cwd: Path, count: int,
          logs: Path) -> list[Call]:
    """`count` processes of argv started at once (one thread each, released together):
    each one's start, end, exit status and last line of stderr."""
    gate = threading.Barrier(count)
    calls: list[Call | None] = [None] * count

    def one(index: int) -> None:
        log = logs / f"burst-{index}.err"
        with open(log, "wb") as err:
            gate.wait()
            started = time.perf_counter()
            process = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=err)
            try:
                status = process.wait(CALL_TIMEOUT)
                hung = ""
            except subprocess.TimeoutExpired:  # a finding, not a reason to leave it running
                process.kill()
                status = process.wait(30)
                hung = f"still running after {CALL_TIMEOUT:g} s, killed"
            ended = time.perf_counter()
        lines = log.read_text(errors="replace").strip().splitlines()
        calls[index] = Call(started, ended, status, hung or (lines[-1] if lines else ""))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CALL_TIMEOUT + 60)
    if any(c is None for c in calls):
        raise RuntimeError(f"a burst call's thread did not end within {CALL_TIMEOUT + 60:g} s")
    return [c for c in calls if c is not None]


# --- growth and goals ------------------------------------------------------------------------


def growth(points: Sequence[tuple[float, float]]) -> list[tuple[float, float] | None]:
    """For each (size, value) after the first: (value / the previous value, exponent), the
    exponent being log(value ratio) / log(size ratio): 0 is flat, 1 linear, above 1 worse
    than linear. None for the first point and where a value is not positive."""
    out: list[tuple[float, float] | None] = [None]
    for (size0, value0), (size1, value1) in itertools.pairwise(points):
        if value0 <= 0 or value1 <= 0 or size1 == size0:
            out.append(None)
            continue
        ratio = value1 / value0
        out.append((ratio, math.log(ratio) / math.log(size1 / size0)))
    return out


def growth_cell(step: tuple[float, float] | None) -> str:
    """A growth table cell: the ratio to the previous row and its exponent."""
    if step is None:
        return "-"
    ratio, exponent = step
    return f"{ratio:.2f}x (^{exponent:.2f})"


@dataclasses.dataclass
class Goal:
    what: str
    measured: float | None  # None: not measured in this run
    limit: float
    at_least: bool = False  # the goal is measured >= limit (else <=)
    shown: str = ""  # the measured figure as the table shows it (default: measured)
    unit: str = ""

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit


def goal_rows(goals: Sequence[Goal]) -> list[str]:
    """A markdown table: goal, measured, met / NOT met (or not measured)."""
    out = ["| goal | measured | |", "|---|---:|---|"]
    for goal in goals:
        sign = ">=" if goal.at_least else "<="
        limit = f"{goal.limit:g}{goal.unit}"
        if goal.measured is None:
            out.append(f"| {goal.what} {sign} {limit} | - | not measured |")
            continue
        shown = goal.shown or f"{goal.measured:.2f}{goal.unit}"
        out.append(f"| {goal.what} {sign} {limit} | {shown} | "
                   f"{'met' if goal.met else '**NOT met**'} |")
    return out


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


# --- machine ---------------------------------------------------------------------------------


def first_line(argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    return (result.stdout or result.stderr).strip().splitlines()[0]


def machine() -> dict[str, str]:
    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    memory = re.search(r"^MemTotal:\s+(\d+) kB", read("/proc/meminfo"), re.M)
    cpu = re.search(r"^model name\s*:\s*(.+)$", read("/proc/cpuinfo"), re.M)
    version = ("import importlib.metadata as m, sys; "
               "print(sys.version.split()[0], m.version('paramiko'))")
    python, paramiko = first_line([str(PYTHON), "-c", version]).split()
    code = first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    return {
        "code": f"{code} (working tree at the time of the run)",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": f"{os.cpu_count()} CPUs (nproc {first_line(['nproc'])})"
               + (f", {cpu[1].strip()}" if cpu else ""),
        "memory": f"{int(memory[1]) / MIB:.1f} GiB" if memory else "?",
        "kernel": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "Debian": read("/etc/debian_version").strip() or "?",
        "Python": f"{python} ({PYTHON})",
        "OpenSSH": first_line(["ssh", "-V"]),
        "paramiko": paramiko,
    }


def stray_sshd(bed_root: Path) -> list[str]:
    """This bed's `sshd -D` processes still alive (their command lines name its directory)."""
    result = subprocess.run(["pgrep", "-af", f"sshd -D -e -f {bed_root}"],
                            capture_output=True, text=True)
    return result.stdout.splitlines()


def conditions(bed_root: Path) -> str:
    """Load average, other test beds' sshd listeners and other distsvc daemons: was the
    machine otherwise quiet?"""
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    listeners = subprocess.run(["pgrep", "-f", "sshd -D -e -f"], capture_output=True,
                               text=True).stdout.split()
    others = len(listeners) - len(stray_sshd(bed_root))
    daemons = subprocess.run(["pgrep", "-f", "distsvc daemon"], capture_output=True,
                             text=True).stdout.split()
    return (f"load average {load}, {others} other test-bed sshd running, "
            f"{len(daemons)} distsvc daemons running")


# --- docs ------------------------------------------------------------------------------------


def write_docs(heading: str, section: str) -> None:
    """Put `section` (starting with `heading`) into docs/benchmarks.md, replacing an earlier
    version of it (up to the next `## ` heading) or appending it; other sections stay."""
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section.rstrip("\n") + "\n" + (
            "" if end < 0 else "\n" + text[end + 1:])
    DOCS.write_text(text.rstrip("\n") + "\n")


def publish(heading: str, section: str, write: bool, skipped: bool = False) -> None:
    """Print the section; into docs/benchmarks.md too when `write` and no part was skipped
    (a partial run must not replace the whole section)."""
    print(section)
    if skipped:
        print("(parts skipped: docs not written)", file=sys.stderr)
    elif write:
        write_docs(heading, section)
        print(f"(written to {DOCS.relative_to(ROOT)})", file=sys.stderr)


def preamble(heading: str, description: str, command: str, info: dict[str, str]) -> list[str]:
    """The opening of a generated report: what was measured, how to repeat it, the machine."""
    out = [heading, "", description, ""]
    out += ["Reproduce (as root, from the repository root):", "", "```sh", command, "```", ""]
    out += ["Machine:", ""]
    out += [f"- {key}: {value}" for key, value in info.items()]
    return [*out, ""]
