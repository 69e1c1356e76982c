"""distsvc next to GNU parallel's `--sshlogin`: many short commands spread over the hosts.

A user coming from GNU parallel runs a batch like `parallel -S h1,h2,h3,h4 cmd ::: inputs`:
parallel starts one `ssh` per job (multiplexed when ~/.ssh/config has `ControlMaster auto`).
With distsvc the same batch is `parallel distsvc-run cmd ::: inputs` (or `xargs -P`): every
job goes to the least-loaded host over the daemon's warm connections. This script measures,
against the test bed's 4 OpenSSH servers (tests/sshbed.py, OpenSSH's defaults), in one run,
interleaved round by round:

1. One command (`true`): plain `ssh`, ssh through a ControlMaster, `parallel -S host true`
   with a fresh ssh and through a ControlMaster, and `distsvc-run true` through a warm daemon.
2. A batch of --jobs commands (`sleep 0.1`), at most --slots at a time: `parallel -S` over the
   4 hosts (slots/4 jobs each), with a fresh ssh per job and through a ControlMaster per host
   opened before (what `ControlMaster auto` with `ControlPersist` gives; parallel's own `-M`
   leaves masters holding its output open, so a caller waiting for the end waits for them),
   and `parallel -j SLOTS distsvc-run ...` through a warm daemon configured with the 4 hosts.
   The floor is jobs x 0.1 s / slots.

Every job gets `-N0` (parallel reads an input but passes none), so each runs exactly
`sleep 0.1`. Every client has a clean HOME; `ssh` gets `-F /dev/null` and its key and
known_hosts explicitly, through parallel's `--ssh`. Needs root (the test bed) and GNU parallel
(installed with apt-get when missing).

Usage (as root, from the repository root):

    .venv/bin/python bench/parallel_bench.py [--runs N] [--jobs N] [--slots N] [--no-docs]
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import subprocess
import sys
from typing import Any

from common import (
    DISTSVC_RUN,
    DOCS,
    ROOT,
    Setting,
    Variant,
    control_master,
    daemon,
    latency_rounds,
    machine,
    median,
    ms,
    p90,
    preamble,
    publish,
    row,
    setting,
    ssh_command,
    ssh_env,
    time_call,
)

DOCS_HEADING = "## Next to GNU parallel --sshlogin (issue 10)"


def ensure_parallel() -> str:
    """GNU parallel's path, installed from Debian's archive if missing (this is a benchmark
    run as root, like the test bed itself)."""
    found = shutil.which("parallel")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "parallel"],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                        "DEBIAN_FRONTEND": "noninteractive"})
    found = shutil.which("parallel")
    if not found:
        raise RuntimeError("GNU parallel is not installed and apt-get did not install it")
    return found


def parallel_argv(parallel: str, logins: list[str], jobs: int,
                  command: list[str]) -> list[str]:
    """`parallel` running `command` once per input on `logins` (each `N/SSH-COMMAND DEST`)."""
    argv = [parallel, "--will-cite", "-N0"]
    for login in logins:
        argv += ["-S", login]
    return [*argv, *command, ":::", *map(str, range(jobs))]


def bench(s: Setting) -> dict[str, Any]:
    parallel = ensure_parallel()
    bed, hosts = s.bed, s.bed.hosts
    plain = ssh_env(s.tmp / "ssh")
    (s.tmp / "ssh").mkdir(exist_ok=True)
    (s.tmp / "ssh" / "known_hosts").write_text("".join(h.known_hosts_line + "\n" for h in hosts))
    # A login is `[jobs/]SSH-COMMAND DESTINATION`: our explicit ssh, the host's port in it.
    per_host = max(1, s.args.slots // len(hosts))
    ssh = [ssh_command(bed, h, s.tmp / "ssh") for h in hosts]
    one_host = s.home("one", daemon=True)
    all_hosts = s.home("all", daemon=True, hosts=hosts)
    sleep = ["sleep", "0.1"]
    jobs = s.args.jobs
    with contextlib.ExitStack() as stack:
        stack.enter_context(daemon(one_host, s.log("one")))
        stack.enter_context(daemon(all_hosts, s.log("all")))
        # What a user with `ControlMaster auto` in ~/.ssh/config has: a master per host,
        # open before.
        muxed = [stack.enter_context(control_master(c, plain, s.tmp / f"cm{i}"))
                 for i, c in enumerate(ssh)]
        fresh_logins = [f"{per_host}/{shlex.join(c)}" for c in ssh]
        muxed_logins = [f"{per_host}/{shlex.join(c)}" for c in muxed]
        single = [
            Variant("ssh, fresh connection", "ssh ... user@addr true", [*ssh[0], "true"],
                    plain),
            Variant("ssh, ControlMaster", "ssh ... -o ControlPath=CM user@addr true",
                    [*muxed[0], "true"], plain),
            Variant("GNU parallel -S", "parallel -S host true ::: 1",
                    parallel_argv(parallel, [f"1/{shlex.join(ssh[0])}"], 1, ["true"]), plain),
            Variant("GNU parallel -S, ControlMaster", "parallel -S 'ssh -o ControlPath=CM "
                    "host' true ::: 1",
                    parallel_argv(parallel, [f"1/{shlex.join(muxed[0])}"], 1, ["true"]),
                    plain),
            Variant("distsvc-run, warm daemon", "distsvc-run true",
                    [str(DISTSVC_RUN), "true"], one_host),
        ]
        batch = [
            Variant("GNU parallel -S, 4 hosts", f"parallel -S {per_host}/h1 ... -S "
                    f"{per_host}/h4 -N0 sleep 0.1 ::: (x{jobs})",
                    parallel_argv(parallel, fresh_logins, jobs, sleep), plain),
            Variant("GNU parallel -S, 4 hosts, ControlMasters",
                    f"parallel -S '{per_host}/ssh -o ControlPath=CM1 h1' ... -N0 sleep 0.1 "
                    f"::: (x{jobs})", parallel_argv(parallel, muxed_logins, jobs, sleep),
                    plain),
            Variant("distsvc-run under GNU parallel, 4 hosts",
                    f"parallel -j {s.args.slots} -N0 distsvc-run sleep 0.1 ::: (x{jobs})",
                    [parallel, "--will-cite", "-j", str(s.args.slots), "-N0",
                     str(DISTSVC_RUN), *sleep, ":::", *map(str, range(jobs))],
                    all_hosts),
        ]
        for _ in range(3):  # warm connections, for every host of the batch's daemon too
            time_call([str(DISTSVC_RUN), "true"], one_host, bed.home)
        batch_warm = [parallel, "--will-cite", "-j", str(s.args.slots), "-N0",
                      str(DISTSVC_RUN), "true", ":::", *map(str, range(s.args.slots))]
        time_call(batch_warm, all_hosts, bed.home, timeout=300)
        singles = latency_rounds(single, bed.home, s.args.runs)
        batches = latency_rounds(batch, bed.home, max(1, s.args.runs // 10), timeout=300)
    return {"single": singles, "batch": batches, "per_host": per_host}


def report(r: dict[str, Any], args: argparse.Namespace, command: str,
           observed: list[str]) -> str:
    info = machine()
    info["GNU parallel"] = parallel_version()
    info["conditions"] = "; ".join(observed)
    out = preamble(DOCS_HEADING, "Measured by `bench/parallel_bench.py` against the test "
                   "bed's 4 OpenSSH servers (`tests/sshbed.py`, OpenSSH's defaults), one run, "
                   "interleaved round by round; wall times of whole client processes. GNU "
                   "parallel gets the same explicit ssh options through `--ssh` as plain ssh "
                   "does.", command, info)
    out += [f"### 1. One command (`true`), {args.runs} calls each", "",
            row("variant", "command", "median ms", "p90 ms", "x distsvc-run"),
            "|---|---|---:|---:|---:|"]
    base = median(dict((v.name, t) for v, t in r["single"])["distsvc-run, warm daemon"])
    for variant, times in r["single"]:
        out.append(row(variant.name, f"`{variant.shown}`", ms(median(times)), ms(p90(times)),
                       f"{median(times) / base:.2f}"))
    floor = args.jobs * 0.1 / args.slots
    runs = len(r["batch"][0][1])
    out += ["", f"### 2. A batch: {args.jobs} x `sleep 0.1`, {args.slots} at a time over 4 "
            f"hosts ({runs} runs each; the floor is {floor:.2f} s)", "",
            row("variant", "command", "median s", "slowest s", "x the floor"),
            "|---|---|---:|---:|---:|"]
    for variant, times in r["batch"]:
        out.append(row(variant.name, f"`{variant.shown}`", f"{median(times):.2f}",
                       f"{max(times):.2f}", f"{median(times) / floor:.2f}"))
    return "\n".join(out) + "\n"


def parallel_version() -> str:
    done = subprocess.run(["parallel", "--version"], capture_output=True, text=True)
    first = done.stdout.splitlines()[0] if done.stdout else "?"
    return first.removeprefix("GNU parallel ").strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="calls per single-command variant "
                        "(batches: a tenth of it)")
    parser.add_argument("--jobs", type=int, default=100, help="commands in a batch")
    parser.add_argument("--slots", type=int, default=16, help="commands at a time")
    parser.add_argument("--no-docs", action="store_true",
                        help=f"only print; do not update {DOCS.relative_to(ROOT)}")
    args = parser.parse_args()
    if min(args.runs, args.jobs, args.slots) < 1:
        parser.error("--runs, --jobs and --slots must be at least 1")
    command = shlex.join([".venv/bin/python", "bench/parallel_bench.py", *sys.argv[1:]])
    observed: list[str] = []
    with setting(args, "distsvc-parallel-", observed) as s:
        results = bench(s)
    section = report(results, args, command, observed)
    publish(DOCS_HEADING, section, not args.no_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
