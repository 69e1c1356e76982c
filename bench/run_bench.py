"""How much does `distsvc-run` cost next to plain `ssh`, with no daemon to keep connections?

Issue 2 asks whether distsvc needs a resident daemon. Without one, every `distsvc-run` is a
fresh Python process that imports paramiko, reads the shared state file, connects and
authenticates, and then relays the command's streams through Python. This script measures
that cost against the tools a user would otherwise reach for, all against the SAME single
local OpenSSH server (one host of the test bed in tests/sshbed.py), in one run:

1. Latency of a trivial command (`true`), median and p90 over --runs calls, interleaved
   round by round so that drift on the machine affects every variant alike:
   - `ssh ... true` with a fresh connection each time (key exchange + authentication);
   - the same `ssh` through an already open ControlMaster connection (the floor a daemon
     holding connections open could aim for);
   - `distsvc-run true` with a cached load measurement (the common case: measurements are
     reused for `max_age` seconds). Its config sets `max_age = 3600` so that no measured call
     happens to refresh the cache; with the default 30 s, one call in every 30 s pays
     the next row's cost instead;
   - `distsvc-run true` with `max_age = 0.001`, so every call probes: connect, run the probe,
     then run the command on the probe's connection (the cold path).
2. Throughput: 200 MiB of zeros (`head -c 209715200 /dev/zero` on the host) read from the
   client's stdout by this script, which counts the bytes; through ssh (fresh and
   multiplexed), through distsvc-run, and a local pipe as the ceiling.
3. The client's fixed costs: `distsvc-run true` with no hosts configured (it runs the command
   locally), the interpreter's bare start-up, and `python -X importtime` of the client's
   entry module and of the SSH adapter (which pulls in paramiko).

Every client gets a clean HOME made the way tests/conftest.py's Client makes one, and `ssh`
is run with `-F /dev/null` and explicit key and known_hosts, so nobody's real ~/.ssh takes
part. Needs root (the test bed creates a user for the login and starts sshd).

A test run (or anything else) at the same time competes for the CPUs and skews the figures;
the report records the load average and other test beds' sshd seen before and after.

Usage (as root, from the repository root):

    .venv/bin/python bench/run_bench.py [--runs N] [--stream-runs N] [--no-docs] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import sshbed  # noqa: E402  (lives in tests/, hence the path above)

VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = VENV_BIN / "python"
DISTSVC_RUN = VENV_BIN / "distsvc-run"
DOCS = ROOT / "docs" / "benchmarks.md"
DOCS_HEADING = "## distsvc-run without a daemon (issue 2)"

STREAM_BYTES = 200 * 1024 * 1024
STREAM_COMMAND = f"head -c {STREAM_BYTES} /dev/zero"
MIB = 1024 * 1024
PARAMIKO_KEX = "curve25519-sha256"  # what paramiko negotiates with OpenSSH (see the report)


# --- statistics ------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def p90(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[8]


# --- clients ---------------------------------------------------------------------------------


def client_home(bed: sshbed.Bed, home: Path) -> dict[str, str]:
    """A user's home as tests/conftest.py's Client makes it: key, known_hosts, runtime dir.

    Returns the environment to run distsvc with; no config file is written here.
    """
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700, parents=True)
    key = ssh / "id_ed25519"
    key.write_bytes(bed.client_key.read_bytes())
    key.chmod(0o600)
    (ssh / "known_hosts").write_text("".join(h.known_hosts_line + "\n" for h in bed.hosts))
    runtime = home / "run"
    runtime.mkdir(mode=0o700)
    return {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_RUNTIME_DIR": str(runtime),
        "LANG": "C.UTF-8",
        "PWD": str(bed.home),  # the directory distsvc-run runs in; it exists on the host
    }


def write_config(env: dict[str, str], bed: sshbed.Bed, host: sshbed.Host,
                 max_age: float | None) -> None:
    lines = [f"max_age = {max_age}"] if max_age is not None else []
    lines += ["[[hosts]]", f'name = "{host.name}"', f'address = "{host.address}"',
              f"port = {host.port}", f'user = "{bed.user}"']
    path = Path(env["XDG_CONFIG_HOME"]) / "distsvc" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


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
        if path.exists():
            raise RuntimeError(f"the ControlMaster at {path} did not exit")


def check_master(muxed: list[str], env: dict[str, str]) -> None:
    result = subprocess.run([*muxed[:-1], "-O", "check", muxed[-1]], env=env,
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ControlMaster not running: {result.stderr.strip()}")


# --- measurements ----------------------------------------------------------------------------


def time_call(argv: Sequence[str], env: dict[str, str], cwd: Path) -> float:
    """Seconds for one call of argv with stdin at end-of-file; it must succeed."""
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=60)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {result.returncode}: "
                           f"{result.stderr.decode(errors='replace').strip()}")
    return elapsed


def time_stream(argv: Sequence[str], env: dict[str, str], cwd: Path) -> float:
    """Seconds to read all of argv's stdout, which must be exactly STREAM_BYTES long."""
    buffer = bytearray(MIB)
    received = 0
    started = time.perf_counter()
    with subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0) as process:
        assert process.stdout is not None and process.stderr is not None
        while count := process.stdout.readinto(buffer):
            received += count
        status = process.wait(timeout=300)
        elapsed = time.perf_counter() - started
        error = process.stderr.read().decode(errors="replace").strip()
    if status != 0 or received != STREAM_BYTES:
        raise RuntimeError(f"{shlex.join(argv)}: exit {status}, {received} bytes: {error}")
    return elapsed


def latency_rounds(variants: Sequence[Variant], cwd: Path,
                   runs: int) -> list[tuple[Variant, list[float]]]:
    """`runs` timed calls of every variant, one of each per round, after one warm-up call."""
    times: list[tuple[Variant, list[float]]] = [(v, []) for v in variants]
    for variant in variants:
        time_call(variant.argv, variant.env, cwd)
    for _ in range(runs):
        for variant, values in times:
            values.append(time_call(variant.argv, variant.env, cwd))
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


def profile_one_call(env: dict[str, str], cwd: Path, top: int = 25) -> str:
    """cProfile of one `distsvc-run true` (cached measurement): the top costs, cumulative."""
    with tempfile.TemporaryDirectory(prefix="distsvc-bench-prof-") as tmp:
        out = Path(tmp) / "run.prof"
        subprocess.run([str(PYTHON), "-m", "cProfile", "-o", str(out), str(DISTSVC_RUN), "true"],
                       env=env, cwd=cwd, stdin=subprocess.DEVNULL, check=True, timeout=60)
        script = ("import pstats, sys; "
                  "pstats.Stats(sys.argv[1]).sort_stats('cumulative').print_stats(int(sys.argv[2]))")
        return subprocess.run([str(PYTHON), "-c", script, str(out), str(top)],
                              capture_output=True, text=True, check=True).stdout


def negotiated_algorithms(bed: sshbed.Bed, host: sshbed.Host, ssh: list[str],
                          env: dict[str, str], client_env: dict[str, str]) -> dict[str, str]:
    """Key exchange and server-to-client cipher each client negotiated with the server.

    The key exchange is part of every fresh connection's cost; the cipher bounds throughput.
    """
    verbose = subprocess.run([ssh[0], "-v", *ssh[1:], "true"], env=env, capture_output=True,
                             text=True, timeout=30).stderr
    kex = re.search(r"kex: algorithm: (\S+)", verbose)
    cipher = re.search(r"kex: server->client cipher: (\S+) MAC: (\S+)", verbose)
    openssh = (f"kex {kex[1]}, cipher {cipher[1]} (MAC {cipher[2]})" if kex and cipher
               else "?")
    script = """if True:
        import logging, os, sys, paramiko
        logging.basicConfig(level=logging.DEBUG, format="%(message)s")
        client = paramiko.SSHClient()
        client.load_host_keys(os.path.expanduser("~/.ssh/known_hosts"))
        client.connect(sys.argv[1], port=int(sys.argv[2]), username=sys.argv[3],
                       allow_agent=False)
        t = client.get_transport()
        print(t.remote_cipher, t.remote_mac)
        client.close()
    """
    result = subprocess.run([str(PYTHON), "-c", script, host.address, str(host.port), bed.user],
                            env=client_env, capture_output=True, text=True, timeout=30)
    kex = re.search(r"^Kex: (\S+)", result.stderr, re.M)
    cipher_mac = result.stdout.split()
    paramiko = (f"kex {kex[1]}, cipher {cipher_mac[0]} (MAC {cipher_mac[1]})"
                if result.returncode == 0 and kex and len(cipher_mac) == 2 else "?")
    return {"OpenSSH ssh": openssh, "paramiko (distsvc-run)": paramiko}


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
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": f"{os.cpu_count()} CPUs (nproc {first_line(['nproc'])})"
               + (f", {cpu[1].strip()}" if cpu else ""),
        "memory": f"{int(memory[1]) / MIB:.1f} GiB" if memory else "?",
        "kernel": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "Debian": read("/etc/debian_version").strip() or "?",
        "Python": f"{python} ({PYTHON})",
        "OpenSSH": first_line(["ssh", "-V"]),
        "paramiko": paramiko,
    }


# --- report ----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def report(info: dict[str, str], command: str, runs: int, stream_runs: int,
           latency: list[tuple[Variant, list[float]]],
           stream: list[tuple[Variant, list[float]]], imports: dict[str, ImportTimes],
           ciphers: dict[str, str]) -> str:
    out = [DOCS_HEADING, ""]
    out += ["Measured by `bench/run_bench.py` against one local OpenSSH server (an `sshd -D` of "
            "the test bed in `tests/sshbed.py` on 127.0.0.2), with clean client homes; `ssh` "
            "gets `-F /dev/null` and its key and known_hosts explicitly. Each figure is the "
            "wall time of `subprocess.run` (`time.perf_counter`), stdin at end-of-file.", ""]
    out += ["Reproduce (as root, from the repository root):", "", "```sh", command, "```", ""]
    out += ["Machine:", ""]
    out += [f"- {key}: {value}" for key, value in info.items()]
    out += [""]

    out += [f"### Latency of a trivial command ({runs} calls each, interleaved)", ""]
    out += ["| variant | command | median ms | p90 ms |", "|---|---|---:|---:|"]
    for variant, values in latency:
        out.append(f"| {variant.name} | `{variant.shown}` | {ms(median(values))} | "
                   f"{ms(p90(values))} |")
    out += [""]
    out += [f"- *paramiko's kex*: ssh made to use `{PARAMIKO_KEX}` (the algorithm paramiko "
            "negotiates, see below) instead of OpenSSH's default post-quantum hybrid.",
            "- *cached*: the load measurement is reused (config `max_age = 3600`, so no measured "
            "call refreshes it; with the default 30 s one call per 30 s is a *probing* call).",
            "- *probing*: `max_age = 0.001`, so every call connects, runs the load probe, and "
            "runs the command on the probe's connection: what the first call after `max_age` "
            "costs.",
            "- *no hosts*: no config file, so distsvc-run runs the command on this machine.", ""]

    out += [f"### Streaming {STREAM_BYTES // MIB} MiB of stdout ({stream_runs} runs each)", ""]
    out += [f"`{STREAM_COMMAND}` on the host; the benchmark reads the client's stdout and counts "
            "the bytes.", ""]
    out += ["| path | command | median s | MiB/s (at median) | fastest s | slowest s |",
            "|---|---|---:|---:|---:|---:|"]
    for variant, values in stream:
        m = median(values)
        out.append(f"| {variant.name} | `{variant.shown}` | {m:.2f} | "
                   f"{STREAM_BYTES / MIB / m:.0f} | {min(values):.2f} | {max(values):.2f} |")
    out += ["", "Negotiated (server to client): "
            + "; ".join(f"{k}: {v}" for k, v in ciphers.items()) + ".", ""]

    out += ["### Import time of the client (`python -X importtime`, median of 7)", ""]
    out += ["| `import ...` | module, cumulative ms | all imports incl. start-up, ms | "
            "loads paramiko | heaviest imports made by distsvc modules, cumulative ms |",
            "|---|---:|---:|---|---|"]
    for module, figures in imports.items():
        heaviest = ", ".join(f"{name} {ms_:.1f}" for name, ms_ in figures.heaviest)
        out.append(f"| `{module}` | {figures.module:.1f} | {figures.total:.1f} | "
                   f"{'yes' if figures.paramiko else 'no'} | {heaviest} |")
    out += [""]
    return "\n".join(out)


def write_docs(section: str) -> None:
    """Put `section` into docs/benchmarks.md, replacing an earlier version of it."""
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    start = text.find(DOCS_HEADING)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(DOCS_HEADING))
        text = text[:start] + section + ("" if end < 0 else "\n" + text[end + 1:])
    DOCS.write_text(text.rstrip("\n") + "\n")


# --- main ------------------------------------------------------------------------------------


def stray_sshd(bed_root: Path) -> list[str]:
    """This bed's `sshd -D` processes still alive (their command lines name its directory)."""
    result = subprocess.run(["pgrep", "-af", f"sshd -D -e -f {bed_root}"],
                            capture_output=True, text=True)
    return result.stdout.splitlines()


@dataclasses.dataclass
class Variant:
    name: str
    shown: str  # the command as the report shows it
    argv: list[str]
    env: dict[str, str]


def conditions(bed_root: Path) -> str:
    """Load average and other test beds' sshd listeners: was the machine otherwise quiet?"""
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    listeners = subprocess.run(["pgrep", "-f", "sshd -D -e -f"], capture_output=True,
                               text=True).stdout.split()
    others = len(listeners) - len(stray_sshd(bed_root))
    return f"load average {load}, {others} other test-bed sshd running"


def bench(args: argparse.Namespace, command: str) -> str:
    observed = []
    with tempfile.TemporaryDirectory(prefix="distsvc-bench-") as tmp, \
            sshbed.running(1) as bed:
        observed.append(f"before: {conditions(bed.root)}")
        tmpdir = Path(tmp)
        tmpdir.chmod(0o700)
        host = bed.hosts[0]
        cwd = bed.home
        cached = client_home(bed, tmpdir / "cached")
        write_config(cached, bed, host, max_age=3600)
        probing = client_home(bed, tmpdir / "probing")
        write_config(probing, bed, host, max_age=0.001)
        local = client_home(bed, tmpdir / "local")
        ssh_home = tmpdir / "ssh"
        ssh_home.mkdir()
        ssh_env = {"HOME": str(ssh_home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                   "LANG": "C.UTF-8"}
        ssh = ssh_command(bed, host, ssh_home)
        run = [str(DISTSVC_RUN)]
        bare = {"PATH": ssh_env["PATH"], "LANG": "C.UTF-8"}

        with control_master(ssh, ssh_env, tmpdir / "cm") as muxed:
            latency_variants = [
                Variant("ssh, fresh connection", "ssh -F /dev/null -p PORT -i KEY -o ... "
                        "user@addr true", [*ssh, "true"], ssh_env),
                # OpenSSH 9.x prefers a post-quantum hybrid key exchange that paramiko lacks;
                # this row is ssh with the key exchange paramiko negotiates, like for like.
                Variant("ssh, fresh, paramiko's kex", "ssh ... -o KexAlgorithms="
                        f"{PARAMIKO_KEX} user@addr true",
                        [*ssh[:-1], "-o", f"KexAlgorithms={PARAMIKO_KEX}", ssh[-1], "true"],
                        ssh_env),
                Variant("ssh, ControlMaster", "ssh ... -o ControlPath=CM user@addr true",
                        [*muxed, "true"], ssh_env),
                Variant("distsvc-run, cached", "distsvc-run true", [*run, "true"], cached),
                Variant("distsvc-run, probing", "distsvc-run true", [*run, "true"], probing),
                Variant("distsvc-run, no hosts", "distsvc-run true", [*run, "true"], local),
                Variant("local `true`", "true", ["true"], bare),
                Variant("python -c pass", ".venv/bin/python -c pass",
                        [str(PYTHON), "-c", "pass"], bare),
            ]
            started = time.perf_counter()
            latency = latency_rounds(latency_variants, cwd, args.runs)
            print(f"latency: {time.perf_counter() - started:.1f} s", file=sys.stderr)

            stream_variants = [
                Variant("local pipe (no ssh)", f"sh -c '{STREAM_COMMAND}'",
                        ["sh", "-c", STREAM_COMMAND], bare),
                Variant("ssh, fresh connection", f"ssh ... user@addr '{STREAM_COMMAND}'",
                        [*ssh, STREAM_COMMAND], ssh_env),
                Variant("ssh, ControlMaster", f"ssh ... -o ControlPath=CM user@addr "
                        f"'{STREAM_COMMAND}'", [*muxed, STREAM_COMMAND], ssh_env),
                Variant("distsvc-run, cached", f"distsvc-run {STREAM_COMMAND}",
                        [*run, *STREAM_COMMAND.split()], cached),
            ]
            started = time.perf_counter()
            stream = stream_rounds(stream_variants, cwd, args.stream_runs)
            print(f"streaming: {time.perf_counter() - started:.1f} s", file=sys.stderr)
            ciphers = negotiated_algorithms(bed, host, ssh, ssh_env, cached)
        if args.profile:
            print(profile_one_call(cached, cwd))
        imports = {module: import_times(module)
                   for module in ("distsvc.commands.run", "distsvc.adapters.ssh")}
        observed.append(f"after: {conditions(bed.root)}")
        bed_root = bed.root
    stray = stray_sshd(bed_root)
    if stray:
        raise RuntimeError(f"sshd processes left behind: {stray}")
    info = {**machine(), "conditions": "; ".join(observed)}
    return report(info, command, args.runs, args.stream_runs, latency, stream, imports, ciphers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="calls per latency variant")
    parser.add_argument("--stream-runs", type=int, default=5, help="runs per streaming path")
    parser.add_argument("--no-docs", action="store_true",
                        help=f"only print; do not update {DOCS.relative_to(ROOT)}")
    parser.add_argument("--profile", action="store_true",
                        help="also print a cProfile of one cached `distsvc-run true`")
    args = parser.parse_args()
    if args.runs < 1 or args.stream_runs < 1:
        parser.error("--runs and --stream-runs must be at least 1")
    reason = sshbed.can_run()
    if reason:
        print(f"run_bench: {reason}", file=sys.stderr)
        return 2
    command = shlex.join([".venv/bin/python", "bench/run_bench.py", *sys.argv[1:]])
    section = bench(args, command)
    print(section)
    if not args.no_docs:
        write_docs(section)
        print(f"(written to {DOCS.relative_to(ROOT)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
