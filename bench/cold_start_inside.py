"""Cold start through systemd socket activation, timed INSIDE the test container.

Run by bench/daemon_bench.py as the container's test user (with the project's venv python),
after it installed distsvc.socket and distsvc.service as user units and started the socket.
For each round it stops distsvc.service (the socket stays, as after the daemon's idle exit),
then times, each from a stopped service and then again against the service it started:

- `distsvc status --json`: what a user waits for (client start-up + activation + answer);
- one `status` request made in this process (distsvc.actions.client.query): the same
  without the client's start-up, so cold minus warm is the daemon's own start;
- with SSH_DESTINATION (the container's sshd, configured as the one host): `distsvc-run true`
  there (what a user waits for first: activation, the daemon's start, its first handshake),
  next to a fresh `ssh SSH_DESTINATION true` (OpenSSH's own handshake, the yardstick).

Prints one JSON object: lists of seconds per variant, and the daemon PIDs seen (a new one
each round proves every cold call really started the service).

Usage: python bench/cold_start_inside.py RUNS DISTSVC_EXECUTABLE [SSH_DESTINATION]
(SSH_DESTINATION: e.g. "-p 2222 user@127.0.0.1", split on spaces; distsvc-run is taken from
DISTSVC_EXECUTABLE's directory.)
"""

import json
import os
import subprocess
import sys
import time

import distsvc.actions.client


def stop_service() -> None:
    """Stop the daemon; the socket stays. Also flush systemd's start rate counter: more than
    StartLimitBurst (5) starts within 10 s, as this script makes, would otherwise fail the
    unit ('start-limit-hit') and close the socket, resetting the waiting client."""
    subprocess.run(["systemctl", "--user", "stop", "distsvc.service"], check=True,
                   capture_output=True)
    subprocess.run(["systemctl", "--user", "reset-failed", "distsvc.service"], check=True,
                   capture_output=True)
    state = subprocess.run(["systemctl", "--user", "is-active", "distsvc.service"],
                           capture_output=True, text=True).stdout.strip()
    if state not in ("inactive", "failed"):
        raise RuntimeError(f"distsvc.service is {state} after stop")


def cli_status(distsvc: str) -> tuple[float, int]:
    started = time.perf_counter()
    result = subprocess.run([distsvc, "status", "--json"], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"distsvc status exited {result.returncode}: "
                           f"{result.stdout.strip()} {result.stderr.strip()}")
    return elapsed, int(json.loads(result.stdout)["pid"])


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            cwd=os.environ.get("HOME", "/"))
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {result.returncode}: {result.stderr.strip()}")
    return elapsed


def query_status() -> tuple[float, int]:
    started = time.perf_counter()
    answer = distsvc.actions.client.query({"type": "status"}, os.environ)
    return time.perf_counter() - started, int(answer["pid"])


def main() -> int:
    runs, executable = int(sys.argv[1]), sys.argv[2]
    destination = sys.argv[3].split() if len(sys.argv) > 3 else None
    run = [os.path.join(os.path.dirname(executable), "distsvc-run"), "true"]
    times: dict[str, list[float]] = {"cli_cold": [], "cli_warm": [], "query_cold": [],
                                     "query_warm": []}
    if destination:
        times.update(run_cold=[], run_warm=[], ssh_fresh=[])
    pids = []
    for _ in range(runs):
        stop_service()
        elapsed, pid = cli_status(executable)
        times["cli_cold"].append(elapsed)
        pids.append(pid)
        times["cli_warm"].append(cli_status(executable)[0])
        stop_service()
        elapsed, pid = query_status()
        times["query_cold"].append(elapsed)
        pids.append(pid)
        times["query_warm"].append(query_status()[0])
        if destination:  # interleaved with the ssh it is compared with
            times["ssh_fresh"].append(timed(["ssh", "-o", "BatchMode=yes", *destination,
                                             "true"]))
            stop_service()
            times["run_cold"].append(timed(run))
            times["run_warm"].append(timed(run))
            pids.append(int(query_status()[1]))
    stop_service()
    print(json.dumps({"times": times, "pids": pids}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
