"""Slurm timings taken INSIDE the booted test container as its user (see bench/slurm_bench.py).

The container is a Slurm submit host (tests/slurmbed.py): its user has srun and sbatch, and a
distsvc cluster `here` without a login node, so distsvc uses Slurm's commands there too.
Interleaved round by round, so a busy moment of the machine hits every variant alike:

- `distsvc-run --on here true` next to `srun true`;
- `distsvc job start --on here true` (a client process; the daemon is the socket-activated
  one) next to `sbatch --wrap true` (both return once Slurm took the job);
- JOBS jobs `true` submitted by SUBMITTERS parallel submitters and waited for: through
  distsvc (`job start`, then one `job wait` on all) and with sbatch (then squeue polled every
  0.2 s until none is left): wall time, and distsvc's own CPU (the daemon's, from /proc, plus
  its clients', from RUSAGE_CHILDREN).

Prints one JSON object. Usage: python bench/slurm_inside.py ROUNDS JOBS SUBMITTERS
"""

import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ENV = {**os.environ, "DISTSVC_DAEMON": "required"}


def timed(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr.strip()}")
    return time.perf_counter() - started, done.stdout.strip()


def drain() -> None:
    """Until no job of this user is left in Slurm's queue."""
    while subprocess.run(["squeue", "-h", "-u", os.environ["USER"], "-o", "%i"],
                         capture_output=True, text=True, check=True).stdout.strip():
        time.sleep(0.2)


def daemon_cpu() -> float:
    pid = int(subprocess.run(["systemctl", "--user", "show", "-p", "MainPID", "--value",
                              "distsvc.service"], capture_output=True, text=True,
                             check=True).stdout.strip())
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def submit_all(submit: Callable[[], str], jobs: int, submitters: int) -> list[str]:
    """`jobs` calls of `submit` (each prints a job ID: `ID` or `ID;cluster`) from `submitters`
    threads at once; the IDs. Shared with bench/slurm_bench.py."""
    ids: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(count: int) -> None:
        try:
            for _ in range(count):
                out = submit()
                with lock:
                    ids.append(out.split(";")[0])
        except BaseException as error:
            errors.append(error)
    shares = [jobs // submitters + (i < jobs % submitters) for i in range(submitters)]
    threads = [threading.Thread(target=worker, args=(n,)) for n in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"a submitter failed: {errors[0]}")
    return ids


def main() -> None:
    rounds, jobs, submitters = (int(a) for a in sys.argv[1:4])
    runs = {
        "srun true": ["srun", "true"],
        "distsvc-run --on here true": ["distsvc-run", "--on", "here", "true"],
    }
    submits = {
        "sbatch --wrap true": ["sbatch", "--parsable", "--wrap", "true"],
        "distsvc job start --on here true": ["distsvc", "job", "start", "--on", "here",
                                             "true"],
    }
    latency: dict[str, list[float]] = {name: [] for name in [*runs, *submits]}
    for argv in [*runs.values(), *submits.values()]:  # warm: the daemon up, the cluster seen
        timed(argv)
    drain()
    # The foreground runs first (they leave nothing queued), then the submissions with each
    # round's jobs drained before the next: a run never waits behind a job for the node.
    for _ in range(rounds):
        for name, argv in runs.items():
            latency[name].append(timed(argv)[0])
    for _ in range(rounds):
        for name, argv in submits.items():
            latency[name].append(timed(argv)[0])
        drain()
    subprocess.run(["distsvc", "job", "clean"], env=ENV, capture_output=True)

    cpu0, children0 = daemon_cpu(), children_cpu()
    started = time.perf_counter()
    ids = submit_all(lambda: timed(["distsvc", "job", "start", "--on", "here", "true"])[1],
                     jobs, submitters)
    submitted = time.perf_counter() - started
    waited = subprocess.run(["distsvc", "job", "wait", *ids], env=ENV, capture_output=True,
                            text=True)
    distsvc_wall = time.perf_counter() - started
    if waited.returncode != 0:
        raise RuntimeError(f"job wait exited {waited.returncode}: {waited.stderr.strip()}")
    distsvc_cpu = daemon_cpu() - cpu0 + children_cpu() - children0
    subprocess.run(["distsvc", "job", "clean"], env=ENV, capture_output=True)

    started = time.perf_counter()
    submit_all(lambda: timed(["sbatch", "--parsable", "--wrap", "true"])[1], jobs, submitters)
    sbatch_submitted = time.perf_counter() - started
    drain()
    sbatch_wall = time.perf_counter() - started
    print(json.dumps({
        "latency": latency,
        "batch": {"jobs": jobs, "submitters": submitters,
                  "distsvc_submitted_s": submitted, "distsvc_wall_s": distsvc_wall,
                  "distsvc_cpu_s": distsvc_cpu, "sbatch_submitted_s": sbatch_submitted,
                  "sbatch_wall_s": sbatch_wall},
    }))


if __name__ == "__main__":
    main()
