"""What does a command or a job on a Slurm cluster cost through distsvc, next to Slurm's own
commands? (issue 11)

Boots tests/slurmbed.py's cluster (a real single-node Slurm 22.05 with slurmdbd, in the booted
systemd container) with the container's sshd as its login node, and measures in one run:

1. From this machine, through the login node (a daemon started for the bench user as
   tests/conftest.py starts one, DISTSVC_DAEMON=required, so nothing falls back
   in-process), interleaved round by round (--rounds each, after a warm-up):
   `distsvc-run --on hpc true` next to `ssh login srun true` fresh and through a
   ControlMaster, and `distsvc job start --on hpc true` next to `sbatch --wrap true` through
   the ControlMaster. Then --jobs jobs `true` submitted by --submitters parallel submitters
   and waited for (`job wait` on all of them): wall time and distsvc's own CPU (the daemon's
   from /proc, its clients' from RUSAGE_CHILDREN), next to the same batch of `sbatch --wrap
   true` through the ControlMaster, squeue polled until none is left.
2. Inside the container, where Slurm's commands are (a cluster without a login node), by
   bench/slurm_inside.py as the container's user with the socket-activated daemon:
   `distsvc-run --on here true` next to `srun true`, `distsvc job start --on here true` next
   to `sbatch --wrap true`, and the same batch.

Medians and p99. Usage (as root, from the repository root; a few minutes):

    .venv/bin/python bench/slurm_bench.py [--rounds N] [--jobs N] [--submitters N] [--no-docs]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

import common  # noqa: E402
from slurm_inside import submit_all  # noqa: E402

import container  # noqa: E402
import slurmbed  # noqa: E402

HEADING = "## Slurm clusters: commands and jobs next to srun and sbatch (issue 11)"
UNITS = ("distsvc.socket", "distsvc.service")


def ssh_argv(host: container.SshHost, key: Path, known: Path) -> list[str]:
    return ["ssh", "-F", "/dev/null", "-p", str(host.port), "-i", str(key),
            "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR", f"{host.user}@{host.address}"]


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd="/", stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {done.returncode}: "
                           f"{done.stderr.strip()}")
    return time.perf_counter() - started, done.stdout.strip()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def login_client(tmp: Path, host: container.SshHost) -> Iterator[dict[str, str]]:
    """A user of this machine whose cluster `hpc` is reached through `host`, with a daemon."""
    assert host.client_key is not None
    home = tmp / "home"
    ssh = home / ".ssh"
    ssh.mkdir(parents=True, mode=0o700)
    (ssh / "id_ed25519").write_bytes(host.client_key.read_bytes())
    (ssh / "id_ed25519").chmod(0o600)
    (ssh / "known_hosts").write_text(host.known_hosts_line + "\n")
    runtime = Path(tempfile.mkdtemp(prefix="distsvc-bench-", dir=common.TMPFS))
    runtime.chmod(0o700)
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "XDG_CONFIG_HOME": str(home / ".config"), "XDG_RUNTIME_DIR": str(runtime),
           "LANG": "C.UTF-8", "DISTSVC_DAEMON": "required"}
    config = home / ".config" / "distsvc" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[[clusters]]\nname = "hpc"\nlogin = "{host.name}"\n'
                      f'address = "{host.address}"\nport = {host.port}\n'
                      f'user = "{host.user}"\n')
    try:
        with common.daemon(env, tmp / "daemon.log") as daemon:
            env["_DAEMON_PID"] = str(daemon.pid)
            yield env
    finally:
        subprocess.run(["rm", "-rf", str(runtime)], check=False)


def drain(muxed: list[str], env: dict[str, str], user: str) -> None:
    while timed([*muxed, f"squeue -h -u {user} -o %i"], env)[1]:
        time.sleep(0.2)


def rounds(runs: dict[str, tuple[list[str], dict[str, str]]],
           submits: dict[str, tuple[list[str], dict[str, str]]], count: int,
           drain_queue: Any) -> dict[str, list[float]]:
    """`count` timed calls of each variant after a warm-up, one of each per round: first the
    foreground runs (nothing left in Slurm's queue by them), then the submissions, each
    round's jobs drained (not timed) before the next round, so a run never waits behind a
    submitted job for the node."""
    latency: dict[str, list[float]] = {name: [] for name in [*runs, *submits]}
    for argv, e in [*runs.values(), *submits.values()]:
        timed(argv, e)
    drain_queue()
    for _ in range(count):
        for name, (argv, e) in runs.items():
            latency[name].append(timed(argv, e)[0])
    for _ in range(count):
        for name, (argv, e) in submits.items():
            latency[name].append(timed(argv, e)[0])
        drain_queue()
    return latency


def from_machine(c: container.Container, host: container.SshHost, tmp: Path,
                 args: argparse.Namespace) -> dict[str, Any]:
    ssh_env = {"HOME": str(tmp), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    known = tmp / "known_hosts"
    known.write_text(host.known_hosts_line + "\n")
    assert host.client_key is not None
    fresh = ssh_argv(host, host.client_key, known)
    with common.control_master(fresh, ssh_env, tmp / "cm.sock") as muxed, \
            login_client(tmp, host) as env:
        runs = {
            "ssh login srun true (fresh connection)": ([*fresh, "srun true"], ssh_env),
            "ssh login srun true (ControlMaster)": ([*muxed, "srun true"], ssh_env),
            "distsvc-run --on hpc true": ([str(common.DISTSVC_RUN), "--on", "hpc", "true"],
                                          env),
        }
        submits = {
            "ssh login sbatch --wrap true (ControlMaster)": (
                [*muxed, "sbatch --parsable --wrap true"], ssh_env),
            "distsvc job start --on hpc true": (
                [str(common.DISTSVC), "job", "start", "--on", "hpc", "true"], env),
        }
        latency = rounds(runs, submits, args.rounds,
                         lambda: drain(muxed, ssh_env, host.user))
        timed([str(common.DISTSVC), "job", "clean"], env)

        pid = int(env["_DAEMON_PID"])
        cpu0, children0 = common.cpu_seconds(pid), children_cpu()
        started = time.perf_counter()
        start = [str(common.DISTSVC), "job", "start", "--on", "hpc", "true"]
        ids = submit_all(lambda: timed(start, env)[1], args.jobs, args.submitters)
        submitted = time.perf_counter() - started
        timed([str(common.DISTSVC), "job", "wait", *ids], env)
        wall = time.perf_counter() - started
        cpu = common.cpu_seconds(pid) - cpu0 + children_cpu() - children0
        rss = common.rss_mib(pid)
        timed([str(common.DISTSVC), "job", "clean"], env)

        started = time.perf_counter()
        submit_all(lambda: timed([*muxed, "sbatch --parsable --wrap true"], ssh_env)[1],
                   args.jobs, args.submitters)
        sbatch_submitted = time.perf_counter() - started
        drain(muxed, ssh_env, host.user)
        sbatch_wall = time.perf_counter() - started
    return {"latency": latency,
            "batch": {"jobs": args.jobs, "submitters": args.submitters,
                      "distsvc_submitted_s": submitted, "distsvc_wall_s": wall,
                      "distsvc_cpu_s": cpu, "daemon_rss_mib": rss,
                      "sbatch_submitted_s": sbatch_submitted, "sbatch_wall_s": sbatch_wall}}


def inside(c: container.Container, args: argparse.Namespace) -> dict[str, Any]:
    c.run(["ln", "-sf", str(container.VENV_BIN / "distsvc"), "/usr/bin/distsvc"])
    for unit in UNITS:
        c.write_file(f"/usr/lib/systemd/user/{unit}", (ROOT / "systemd" / unit).read_text())
    c.write_file(f"{c.home}/.config/distsvc/config.toml", '[[clusters]]\nname = "here"\n',
                 owner=c.user)
    c.run_as_user(["systemctl", "--user", "daemon-reload"])
    c.run_as_user(["systemctl", "--user", "enable", "--now", "distsvc.socket"])
    out = c.run_as_user(["python3", str(ROOT / "bench" / "slurm_inside.py"), str(args.rounds),
                         str(args.jobs), str(args.submitters)], timeout=3600).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def latency_rows(latency: dict[str, list[float]]) -> list[str]:
    out = ["| what | median ms | p99 ms |", "|---|---|---|"]
    for name, values in latency.items():
        out.append(f"| `{name}` | {common.ms(common.median(values))} | "
                   f"{common.ms(common.p99(values))} |")
    return out


def batch_line(b: dict[str, Any], where: str) -> str:
    return (f"{b['jobs']} jobs `true` from {b['submitters']} parallel submitters, {where}: "
            f"through distsvc submitted in {b['distsvc_submitted_s']:.1f} s and all ended "
            f"after {b['distsvc_wall_s']:.1f} s, distsvc's own CPU {b['distsvc_cpu_s']:.1f} s "
            f"({b['distsvc_cpu_s'] / b['jobs'] * 1000:.0f} ms a job, clients and daemon); "
            f"with sbatch submitted in {b['sbatch_submitted_s']:.1f} s, all ended after "
            f"{b['sbatch_wall_s']:.1f} s.")


def report(data: dict[str, Any], args: argparse.Namespace) -> str:
    command = shlex.join([".venv/bin/python", "bench/slurm_bench.py", "--rounds",
                          str(args.rounds), "--jobs", str(args.jobs), "--submitters",
                          str(args.submitters)])
    out = common.preamble(HEADING, "A real single-node Slurm 22.05 (tests/slurmbed.py: "
                          "slurmctld, slurmd, slurmdbd over MariaDB, in the booted container; "
                          "2 CPUs, so 2 jobs run at once), measured by bench/slurm_bench.py.",
                          command, common.machine())
    machine_side, inside_side = data["machine"], data["inside"]
    out += ["### 1. From this machine, through the login node (sshd in the container)", ""]
    out += latency_rows(machine_side["latency"])
    out += ["", batch_line(machine_side["batch"], "through the login node") +
            f" The daemon's RSS after: {machine_side['batch']['daemon_rss_mib']:.1f} MiB.", ""]
    out += ["### 2. On a submit host (Slurm's commands here: the container's user)", ""]
    out += latency_rows(inside_side["latency"])
    out += ["", batch_line(inside_side["batch"], "with Slurm's commands here"), ""]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--submitters", type=int, default=4)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="distsvc-bench-", dir="/var/tmp") as tmp, \
            slurmbed.running() as (c, host, _):
        Path(tmp).chmod(0o700)
        data = {"machine": from_machine(c, host, Path(tmp), args), "inside": inside(c, args)}
    text = report(data, args)
    print(text)
    if not args.no_docs:
        common.write_docs(HEADING, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
