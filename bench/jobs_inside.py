"""Job timings, taken INSIDE the booted test container as its user (see bench/jobs_bench.py).

Interleaved round by round, so a busy moment of the machine hits every variant alike:

- `distsvc job start true` (a client process: what a user waits for), and the same request
  sent from this process (the daemon's own share), next to `systemd-run --user true` (returns
  once the unit started) and `systemd-run --user --scope true` (runs it in a scope, waits);
- start and wait: `distsvc job start true` then `distsvc job wait ID`, next to
  `systemd-run --user --wait true`;
- `distsvc job logs --follow` of a job writing GIB_FOLLOW GiB (one follower, started with the
  job), next to `cat` of the finished file;
- FOLLOWERS concurrent followers of one job writing FOLLOWED MiB: each one's throughput, the
  daemon's CPU time and RSS before and after.

Prints one JSON object. Usage: python bench/jobs_inside.py ROUNDS GIB_FOLLOW FOLLOWERS FOLLOWED
"""

import json
import os
import subprocess
import sys
import time

import distsvc.actions.jobs

ENV = {**os.environ, "DISTSVC_DAEMON": "required"}


def timed(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(argv, env=ENV, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - started, out.strip()


def request_start() -> tuple[float, str]:
    started = time.perf_counter()
    answer = distsvc.actions.jobs.request(
        {"type": "job_start", "argv": ["true"], "cwd": os.getcwd(), "env": dict(os.environ),
         "limits": {}, "isolate": [], "name": None, "best_effort": True}, ENV)
    return time.perf_counter() - started, answer["jobs"][0]["id"]


def daemon_pid() -> int:
    out = subprocess.run(["systemctl", "--user", "show", "-p", "MainPID", "--value",
                          "distsvc.service"], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def cpu_and_rss(pid: int) -> tuple[float, int]:
    from pathlib import Path

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    rss = next(int(line.split()[1]) for line in
               Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
    return (int(fields[11]) + int(fields[12])) / ticks, rss


def main() -> None:
    rounds, gib, followers, followed = (int(a) for a in sys.argv[1:5])
    results: dict[str, list[float]] = {k: [] for k in (
        "distsvc job start true", "job_start request (in-process)", "systemd-run --user true",
        "systemd-run --user --scope true", "distsvc job start + wait",
        "systemd-run --user --wait true")}
    ids = []
    for _ in range(3):  # warm: the daemon started, pystemd loaded, the probe done
        ids.append(timed(["distsvc", "job", "start", "--isolate", "none", "true"])[1])
    for _ in range(rounds):
        t, job_id = timed(["distsvc", "job", "start", "--isolate", "none", "true"])
        results["distsvc job start true"].append(t)
        ids.append(job_id)
        t, job_id = request_start()
        results["job_start request (in-process)"].append(t)
        ids.append(job_id)
        results["systemd-run --user true"].append(
            timed(["systemd-run", "--user", "-q", "true"])[0])
        results["systemd-run --user --scope true"].append(
            timed(["systemd-run", "--user", "-q", "--scope", "true"])[0])
        started = time.perf_counter()
        _, job_id = timed(["distsvc", "job", "start", "--isolate", "none", "true"])
        timed(["distsvc", "job", "wait", job_id])
        results["distsvc job start + wait"].append(time.perf_counter() - started)
        results["systemd-run --user --wait true"].append(
            timed(["systemd-run", "--user", "-q", "--wait", "true"])[0])
        if len(ids) > 60:
            subprocess.run(["distsvc", "job", "wait", *ids], env=ENV, capture_output=True)
            subprocess.run(["distsvc", "job", "clean"], env=ENV, capture_output=True)
            ids = []

    # One follower of a big job.
    size = gib << 30
    writer = f"head -c {size} /dev/zero"
    _, job_id = timed(["distsvc", "job", "start", "--isolate", "none", "sh", "-c", writer])
    started = time.perf_counter()
    out = subprocess.run(["sh", "-c", f"distsvc job logs --follow --stdout {job_id} | wc -c"],
                         env=ENV, capture_output=True, text=True, check=True).stdout
    follow_s = time.perf_counter() - started
    assert int(out) == size, out
    path = os.path.expanduser(f"~/.local/state/distsvc/jobs/{job_id}/stdout")
    started = time.perf_counter()
    subprocess.run(["sh", "-c", f"cat {path} | wc -c"], check=True, capture_output=True)
    cat_s = time.perf_counter() - started
    subprocess.run(["distsvc", "job", "remove", job_id], env=ENV, check=True,
                   capture_output=True)

    # Many followers of one job.
    pid = daemon_pid()
    cpu0, rss0 = cpu_and_rss(pid)
    writer = (f"sleep 1; head -c {followed << 20} /dev/urandom")
    _, job_id = timed(["distsvc", "job", "start", "--isolate", "none", "sh", "-c", writer])
    script = (f"s=$(date +%s.%N); n=$(distsvc job logs --follow --stdout {job_id} | wc -c); "
              "e=$(date +%s.%N); echo $n $s $e")
    procs = [subprocess.Popen(["sh", "-c", script], env=ENV, stdout=subprocess.PIPE, text=True)
             for _ in range(followers)]
    rates, sizes = [], set()
    for proc in procs:
        n, s, e = proc.communicate()[0].split()
        sizes.add(int(n))
        rates.append(int(n) / (float(e) - float(s)) / (1 << 20))
    cpu1, rss1 = cpu_and_rss(pid)
    subprocess.run(["distsvc", "job", "remove", job_id], env=ENV, capture_output=True)
    print(json.dumps({
        "latency": results,
        "follow": {"bytes": size, "follow_s": follow_s, "cat_s": cat_s},
        "followers": {"count": followers, "mib": followed, "sizes": sorted(sizes),
                      "rates_mib_s": rates, "daemon_cpu_s": cpu1 - cpu0,
                      "daemon_rss_kib": [rss0, rss1]},
    }))


if __name__ == "__main__":
    main()
