"""Helpers shared by the benchmark scripts (run_bench.py, daemon_bench.py).

What lives here: statistics, clean client homes and configs made the way tests/conftest.py's
Client makes them, `ssh` command lines that ignore every ~/.ssh, a ControlMaster context,
timing one call or one 200 MiB stream, `python -X importtime` parsing, the machine
description, the quiet-machine check, and replacing one generated section of
docs/benchmarks.md. Importing this module puts tests/ on sys.path (for sshbed).
"""

from __future__ import annotations

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
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import sshbed  # noqa: E402  (lives in tests/, hence the path above)

VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = VENV_BIN / "python"
DISTSVC = VENV_BIN / "distsvc"
DISTSVC_RUN = VENV_BIN / "distsvc-run"
DOCS = ROOT / "docs" / "benchmarks.md"

STREAM_BYTES = 200 * 1024 * 1024
STREAM_COMMAND = f"head -c {STREAM_BYTES} /dev/zero"
MIB = 1024 * 1024


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
        if path.exists():
            raise RuntimeError(f"the ControlMaster at {path} did not exit")


def check_master(muxed: list[str], env: dict[str, str]) -> None:
    result = subprocess.run([*muxed[:-1], "-O", "check", muxed[-1]], env=env,
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ControlMaster not running: {result.stderr.strip()}")


# --- measurements ----------------------------------------------------------------------------


@dataclasses.dataclass
class Variant:
    name: str
    shown: str  # the command as the report shows it
    argv: list[str]
    env: dict[str, str]


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
