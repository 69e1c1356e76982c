"""The longer soak (issue 6): many commands through one daemon, and what it holds after.

tests/test_soak_e2e.py runs a few hundred commands in CI; this runs --commands (default
20,000) through one `distsvc daemon` against the test bed's OpenSSH servers
(tests/sshbed.py: 4 hosts at OpenSSH's defaults, MaxSessions 10 and MaxStartups 10:30:100),
half of them one after another and half --concurrency at once (more commands than one
connection's MaxSessions on a host), each `distsvc-run sh -c 'exit N'` with N = i % 5 and its
status checked. Read from /proc (tests/proc.py) after a warm-up, after each phase (let
settle) and sampled every second for the peak: the daemon's open fds, threads, VmRSS, child
processes, and its pooled connections (`distsvc status --json`). Then the same number of
commands, in the same two phases, with `ssh` through one ControlMaster per host (OpenSSH's
own multiplexing; --concurrency / hosts sessions per master at most, which must stay within
MaxSessions) for the commands-per-second figure side by side.

The daemon runs with the soft fd limit a systemd user unit gets (1024), so a daemon that
keeps fds per command would fail within the run instead of only showing a larger figure.
The client's runtime directory (the daemon's socket, the state file) is on a tmpfs, as
/run/user/UID is. Every client is a fresh `distsvc-run` process: its start-up (~70 ms of a
quiet machine's CPU, docs/benchmarks.md) is most of each command's cost and bounds the
commands per second on 2 CPUs.

Usage (as root, from the repository root; ~3 minutes per 2,000 commands on 2 CPUs):

    .venv/bin/python bench/soak.py [--commands N] [--concurrency C] [--no-ssh] [--no-docs]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import resource
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
    DISTSVC_RUN,
    client_home,
    conditions,
    control_master,
    machine,
    preamble,
    publish,
    ssh_command,
    ssh_env,
    sshbed,
    stray_sshd,
    write_config,
)
from daemon_bench import TMPFS, daemon

import proc  # tests/proc.py (common puts tests/ on the path)

DOCS_HEADING = "## The soak: one daemon, many commands (issue 6)"
HOSTS = 4
USER_UNIT_FDS = 1024  # systemd's default soft RLIMIT_NOFILE for services
SETTLE = 30.0  # seconds the daemon gets after a phase to release what its commands held
FD_SLACK = 2


@dataclasses.dataclass
class Phase:
    name: str
    commands: int
    wall: float
    failures: list[str]

    @property
    def rate(self) -> float:
        return self.commands / self.wall


@dataclasses.dataclass
class Reading:
    when: str
    figures: proc.Figures
    connections: int


# --- running commands ------------------------------------------------------------------------


def expected(i: int) -> int:
    return i % 5


def one(argv: Sequence[str], env: dict[str, str], cwd: Path, want: int) -> str | None:
    """Run one command; None if it exited `want`, else what went wrong."""
    try:
        result = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "no status within 120 s"
    if result.returncode == want:
        return None
    return (f"exit {result.returncode} (wanted {want}): "
            f"{result.stderr.decode(errors='replace').strip()[:300]}")


Command = Callable[[int, int], tuple[list[str], dict[str, str], Path]]


def phases(count: int, concurrency: int, command: Command) -> Iterator[Phase]:
    """count // 2 commands one after another, then the rest by `concurrency` workers at
    once. command(i, worker) gives command i's argv, environment and directory; `worker` is
    the concurrent worker running it (-1 in the sequential phase)."""
    sequential = count // 2
    failures: list[str] = []
    started = time.perf_counter()
    for i in range(sequential):
        argv, env, cwd = command(i, -1)
        if (error := one(argv, env, cwd, expected(i))) is not None:
            failures.append(error)
    yield Phase("one after another", sequential, time.perf_counter() - started, failures)

    errors: list[str] = []
    lock = threading.Lock()

    def work(worker: int) -> None:
        for i in range(sequential + worker, count, concurrency):
            argv, env, cwd = command(i, worker)
            if (error := one(argv, env, cwd, expected(i))) is not None:
                with lock:
                    errors.append(error)

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(w,)) for w in range(concurrency)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    yield Phase(f"{concurrency} at once", count - sequential, time.perf_counter() - started,
                errors)


# --- the daemon's figures --------------------------------------------------------------------


def pooled(env: dict[str, str]) -> int:
    result = subprocess.run([str(DISTSVC), "status", "--json"], env=env, capture_output=True,
                            timeout=60, check=True)
    count: int = json.loads(result.stdout)["connections"]
    return count


def reading(when: str, pid: int, env: dict[str, str], settle_to: int | None = None) -> Reading:
    if settle_to is not None:
        proc.settle(lambda: proc.fd_count(pid), settle_to, SETTLE)
    else:
        proc.steady(lambda: proc.fd_count(pid), SETTLE)
    return Reading(when, proc.read(pid), pooled(env))


class Peak:
    """The highest fds, threads and RSS of a process, sampled every second in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fds = self.threads = self.rss_kib = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(1.0):
            with contextlib.suppress(OSError):
                self.fds = max(self.fds, proc.fd_count(self.pid))
                self.threads = max(self.threads, proc.thread_count(self.pid))
                self.rss_kib = max(self.rss_kib, proc.rss_kib(self.pid))

    def __enter__(self) -> Peak:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


# --- the two soaks ---------------------------------------------------------------------------


def soak_daemon(bed: sshbed.Bed, tmp: Path, runtime: Path,
                args: argparse.Namespace) -> dict[str, Any]:
    env = client_home(bed, tmp / "daemon-user", daemon=True, runtime=runtime / "daemon-user")
    env["DISTSVC_DAEMON"] = "required"  # a command the daemon did not carry fails
    write_config(env, bed, bed.hosts, max_age=None)  # max_age 30 s: probes as in real use

    def command(i: int, worker: int) -> tuple[list[str], dict[str, str], Path]:
        return [str(DISTSVC_RUN), "sh", "-c", f"exit {expected(i)}"], env, bed.home

    with daemon(env, tmp / "daemon.log") as process:
        pid = process.pid
        warm = list(phases(2 * args.concurrency, args.concurrency, command))
        readings = [reading("after a warm-up (first readings)", pid, env)]
        start_fds = readings[0].figures.fds
        done = []
        with Peak(pid) as peak:
            for phase in phases(args.commands, args.concurrency, command):
                done.append(phase)
                readings.append(reading(f"after {phase.commands} {phase.name}", pid, env,
                                        settle_to=start_fds + FD_SLACK))
        limit = Path(f"/proc/{pid}/limits").read_text()
    soft_fds = next(line.split()[3] for line in limit.splitlines()
                    if line.startswith("Max open files"))
    return {"warm": warm, "phases": done, "readings": readings, "peak": peak,
            "soft_fds": soft_fds}


def soak_ssh(bed: sshbed.Bed, tmp: Path, args: argparse.Namespace) -> list[Phase]:
    plain = ssh_env(tmp / "ssh")
    with contextlib.ExitStack() as stack:
        muxed = []
        for host in bed.hosts:
            known = tmp / f"ssh-{host.name}"  # ssh_command puts this host's key in there
            known.mkdir()
            muxed.append(stack.enter_context(control_master(
                ssh_command(bed, host, known), plain, tmp / f"cm-{host.name}")))

        def command(i: int, worker: int) -> tuple[list[str], dict[str, str], Path]:
            # Sequential: the hosts in turn. Concurrent: each worker keeps to one master, so
            # none carries more than ceil(concurrency / hosts) sessions (MaxSessions is 10).
            host = (i if worker < 0 else worker) % len(muxed)
            return [*muxed[host], f"exit {expected(i)}"], plain, bed.home

        list(phases(2 * args.concurrency, args.concurrency, command))  # warm, as above
        return list(phases(args.commands, args.concurrency, command))


# --- report ----------------------------------------------------------------------------------


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def failures_text(phase: Phase) -> str:
    if not phase.failures:
        return "0"
    return f"**{len(phase.failures)}**"


def report(info: dict[str, str], command: str, args: argparse.Namespace,
           daemon_result: dict[str, Any], ssh_phases: list[Phase] | None) -> str:
    out = preamble(
        DOCS_HEADING,
        f"Measured by `bench/soak.py`: {args.commands} commands through one `distsvc "
        f"daemon` (DISTSVC_DAEMON=required), half one after another and half "
        f"{args.concurrency} at once, against the test bed's {HOSTS} OpenSSH servers at "
        "OpenSSH's defaults (MaxSessions 10, MaxStartups 10:30:100); every command is a "
        "fresh `distsvc-run sh -c 'exit N'` process (N = i % 5, checked). The daemon's "
        "figures are read from /proc after a warm-up of "
        f"{2 * args.concurrency} commands and after each phase, once its fd count is back "
        f"within {FD_SLACK} of the first reading (or {SETTLE:g} s passed). The script's "
        "default, 20,000 commands, is the longer soak; this run's size is in the command "
        "below.", command, info)
    out += ["### The daemon's figures", ""]
    out += [row("when", "fds", "threads", "VmRSS MiB", "child processes",
                "pooled connections"), "|---|---:|---:|---:|---:|---:|"]
    for r in daemon_result["readings"]:
        f = r.figures
        out.append(row(r.when, f.fds, f.threads, f"{f.rss_kib / 1024:.1f}", len(f.children),
                       r.connections))
    peak = daemon_result["peak"]
    out.append(row("peak during the run (sampled each second)", peak.fds, peak.threads,
                   f"{peak.rss_kib / 1024:.1f}", "-", "-"))
    out += ["", f"The daemon's soft fd limit: {daemon_result['soft_fds']} (a systemd user "
            "unit's default)."]
    out += ["", "### Commands per second", ""]
    out += [row("phase", "commands", "distsvc-run via the daemon: commands/s",
                "failed", "ssh via ControlMaster: commands/s", "failed"),
            "|---|---:|---:|---:|---:|---:|"]
    for index, phase in enumerate(daemon_result["phases"]):
        ssh_cells: list[object] = ["-", "-"]
        if ssh_phases is not None:
            ssh_phase = ssh_phases[index]
            ssh_cells = [f"{ssh_phase.rate:.1f}", failures_text(ssh_phase)]
        out.append(row(phase.name, phase.commands, f"{phase.rate:.1f}", failures_text(phase),
                       *ssh_cells))
    out += ["", "ssh: `ssh -F /dev/null ... -o ControlPath=CM user@addr 'exit N'`, one "
            f"ControlMaster per host, the concurrent phase's {args.concurrency} workers "
            f"spread evenly over the {HOSTS} masters (a master carries at most MaxSessions "
            "sessions)."]
    failed = [(p.name, e) for p in daemon_result["phases"] for e in p.failures[:3]]
    if ssh_phases is not None:
        failed += [(f"ssh, {p.name}", e) for p in ssh_phases for e in p.failures[:3]]
    if failed:
        out += ["", "First failures:", ""]
        out += [f"- {name}: `{error}`" for name, error in failed]
    return "\n".join([*out, ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=20000,
                        help="commands per soak (half sequential, half concurrent)")
    parser.add_argument("--concurrency", type=int, default=30,
                        help="commands at once in the concurrent phase")
    parser.add_argument("--no-ssh", action="store_true",
                        help="leave out the ssh ControlMaster comparison")
    parser.add_argument("--no-docs", action="store_true",
                        help="only print; do not update docs/benchmarks.md")
    args = parser.parse_args()
    if args.commands < 2 or not 1 <= args.concurrency <= 10 * HOSTS:
        parser.error(f"--commands at least 2, --concurrency 1-{10 * HOSTS} (ControlMaster: "
                     "at most MaxSessions 10 per host)")
    reason = sshbed.can_run()
    if reason:
        print(f"soak: {reason}", file=sys.stderr)
        return 2
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(USER_UNIT_FDS, hard), hard))
    command = shlex.join([".venv/bin/python", "bench/soak.py", *sys.argv[1:]])
    observed = []
    with tempfile.TemporaryDirectory(prefix="distsvc-soak-") as tmp, \
            tempfile.TemporaryDirectory(prefix="distsvc-soak-", dir=TMPFS) as runtime, \
            sshbed.running(HOSTS) as bed:
        Path(tmp).chmod(0o700)
        observed.append(f"before: {conditions(bed.root)}")
        started = time.perf_counter()
        daemon_result = soak_daemon(bed, Path(tmp), Path(runtime), args)
        print(f"daemon soak: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        ssh_phases = None
        if not args.no_ssh:
            started = time.perf_counter()
            ssh_phases = soak_ssh(bed, Path(tmp), args)
            print(f"ssh soak: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        observed.append(f"after: {conditions(bed.root)}")
        bed_root = bed.root
    if stray_sshd(bed_root):
        raise RuntimeError(f"sshd left running: {stray_sshd(bed_root)}")
    info = {**machine(), "tmpfs for runtime directories": str(TMPFS),
            "conditions": "; ".join(observed)}
    section = report(info, command, args, daemon_result, ssh_phases)
    publish(DOCS_HEADING, section, not args.no_docs)
    failed = sum(len(p.failures) for p in daemon_result["phases"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
