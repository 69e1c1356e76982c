"""How distsvc's costs grow with the hosts configured and the clients at once (issue 9).

Issue 9 asks that no figure grow worse than linearly: linear in the hosts where distsvc must
touch every host (a scan, a refresh, the warm connections it holds), flat where it need not
(choosing the best host, the client's dispatch). This script measures, in one run:

1. Hosts: with 1, 10, 100 and 1,000 hosts configured (--quick: 1, 10, 100), each a loopback
   address 127.0.10.1, 127.0.10.2, ... (250 per /24) on one port, served by sshd processes
   of 16 addresses each (OpenSSH's MAX_LISTEN_SOCKS; 63 of them for 1,000 hosts) at
   OpenSSH's defaults (MaxStartups 10:30:100, MaxSessions 10), as real hosts would be. The
   addresses are dealt out to the processes in turn, so hosts next to each other in the
   config, which a scan probes at the same time, are served by different processes, and no
   sshd meets more handshakes at once than its MaxStartups lets in: what is measured is
   distsvc, not a server refusing it. (One sshd under many names would put every handshake
   of a scan on one process and its MaxStartups; real hosts are many servers.) For each:
   - `distsvc scan` with no state and no daemon: wall time and its CPU (wait4's rusage).
     One pass measures at most scanplan.MAX_PER_PASS (256) hosts, oldest first, so from
     1,000 hosts a pass takes 256 (the report says how many it measured);
   - `distsvc hosts` without a daemon, reading the state (`max_age = 3600`; one untimed
     call first measures what the scan pass left, so the timed ones probe nothing): the
     whole CLI's wall time;
   - a daemon: VmRSS 1 s after start, then one `hosts --refresh` through it (it connects to
     every host and keeps the connections: wall, its CPU) and VmRSS with N warm
     connections; then `distsvc hosts` (the CLI) and a raw `hosts` request through it, and
     sequential `best` requests (pre-encoded frames over a raw socket: common.raw_query):
     median and p99.
2. Clients: against a daemon with the bed's 4 hosts (at OpenSSH's defaults), 1, 10, 32 and
   100 concurrent clients: `best` from raw-socket client processes (median, p99, queries/s),
   and `distsvc-run true` started at once (each call's latency, median and p99, and the
   wall time of each burst).

Each table has a growth column per step: the ratio to the previous column and its exponent
(log ratio / log size ratio: 0 flat, 1 linear, above 1 worse than linear), next to what the
figure is expected to do and why.

Fits this machine: the daemon and this script get RLIMIT_NOFILE raised (a warm connection is
a socket and a thread in the daemon, a process pair in sshd); the script checks the fd limit,
free PIDs and memory for the largest count before it starts, and refuses with one line
when they fall short. The scan's concurrency is distsvc's own (32 probes at once).

Everything started here is stopped at the end (daemons, sshd, temporary directories) and the
script fails if a process of its own is left.

Usage (as root, from the repository root; --quick about two minutes, the full run longer):

    .venv/bin/python bench/scaling_bench.py [--quick] [--rounds N] [--skip PART]... [--no-docs]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import shlex
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
    ROOT,
    TMPFS,
    Setting,
    burst,
    concurrent_raw,
    config_mapping,
    cpu_seconds,
    daemon,
    frame,
    growth,
    growth_cell,
    machine,
    many_hosts,
    median,
    ms,
    p99,
    preamble,
    publish,
    raise_fd_limit,
    raw_query,
    refresh_through,
    request,
    row,
    rss_mib,
    setting,
    socket_path,
    sshbed,
    time_call,
    timed_scan,
)

import distsvc.scanplan  # the venv has distsvc (the tests/ path is set by common)
import distsvc.state

DOCS_HEADING = "## How costs grow with hosts and clients (issue 9)"
PARTS = ("hosts", "clients")
HOST_COUNTS = (1, 10, 100, 1000)
QUICK_HOST_COUNTS = (1, 10, 100)
CLIENT_COUNTS = (1, 10, 32, 100)
FD_LIMIT = 16384
PER_SUBNET = 250
# Not the default 2 s: a probe's time includes its handshake, which waits behind the other
# 31 of a scan in one process (paramiko's key exchange is CPU); on this shared 2-CPU machine
# that alone passes 2 s, and hosts that are up came out `unknown`. The figures here are
# about how costs grow, so every host must come up; the report counts those that did.
PROBE_TIMEOUT = ("probe_timeout = 10",)


def addresses(count: int) -> list[str]:
    """127.0.10.1, ..., 127.0.10.250, 127.0.11.1, ...: clear of the test bed (127.0.0.x) and
    of daemon_bench.py's 200 hosts (127.0.1.x)."""
    return [f"127.0.{10 + i // PER_SUBNET}.{1 + i % PER_SUBNET}" for i in range(count)]


def counts(text: str) -> tuple[int, ...]:
    """An option's "1,10,100": positive, increasing counts."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of counts: {text!r}") from None
    if min(values) < 1 or list(values) != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"counts must be positive and increasing: {text!r}")
    return values


def shortfall(hosts: int, fd_limit: int) -> str | None:
    """Why `hosts` warm connections would not fit this machine, or None. A warm connection
    costs the daemon a socket (and a thread), and sshd a pair of processes."""
    if fd_limit < 2 * hosts + 256:
        return f"RLIMIT_NOFILE {fd_limit} is too low for {hosts} hosts (ulimit -n)"
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    running = sum(1 for e in Path("/proc").iterdir() if e.name.isdigit())
    if pid_max - running < 4 * hosts + 1000:
        return f"{pid_max - running} free PIDs is too few for {hosts} hosts"
    meminfo = Path("/proc/meminfo").read_text()
    available = next(int(line.split()[1]) for line in meminfo.splitlines()
                     if line.startswith("MemAvailable:"))
    if available < hosts * 8 * 1024 + 1024 * 1024:  # ~8 MiB per connection, all told
        return f"{available // 1024} MiB available is too little for {hosts} hosts"
    return None


# --- 1. hosts --------------------------------------------------------------------------------


def raw_times(path: Path, data: bytes, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        raw_query(str(path), data)
        times.append(time.perf_counter() - started)
    return times


def one_count(s: Setting, count: int) -> dict[str, Any]:
    rounds = s.args.rounds
    out: dict[str, Any] = {"hosts": count}
    with many_hosts(s.bed, addresses(count), interleave=True) as (hosts, sshd):
        out["sshd"] = len(sshd)
        off = s.home(f"off-{count}", daemon=False, hosts=hosts, extra=PROBE_TIMEOUT)
        out["scan_wall"], usage = timed_scan(off, s.log(f"scan-{count}"))
        out["scan_cpu"] = usage.ru_utime + usage.ru_stime
        state = distsvc.state.read(socket_path(off).parent)
        out["scan_states"] = Counter(e.state for e in state.hosts.values())
        out["scan_errors"] = Counter(e.error for e in state.hosts.values()
                                     if e.state != "up").most_common(2)
        print(f"hosts {count}: scan {out['scan_wall']:.1f} s, {dict(out['scan_states'])}, "
              f"{out['scan_errors']}", file=sys.stderr)
        hosts_cli = [str(DISTSVC), "hosts"]
        # One pass measures at most scanplan.MAX_PER_PASS hosts; the first `hosts` measures
        # the rest, so the timed ones only read the state.
        time_call(hosts_cli, off, s.bed.home, timeout=900)
        out["hosts_off"] = [time_call(hosts_cli, off, s.bed.home, timeout=600)
                            for _ in range(rounds)]

        env = s.home(f"daemon-{count}", daemon=True, hosts=hosts, extra=PROBE_TIMEOUT)
        with daemon(env, s.log(f"daemon-{count}")) as process:
            time.sleep(1.0)
            out["rss_idle"] = rss_mib(process.pid)
            cpu_before = cpu_seconds(process.pid)
            started = time.perf_counter()
            rows = refresh_through(env, timeout=1800)
            out["refresh_wall"] = time.perf_counter() - started
            out["refresh_cpu"] = cpu_seconds(process.pid) - cpu_before
            out["refresh_up"] = sum(r["state"] == "up" for r in rows)
            out["rss_warm"] = rss_mib(process.pid)
            out["connections"] = request(env, {"type": "status"})[-1].get("connections")
            out["hosts_daemon"] = [time_call(hosts_cli, env, s.bed.home, timeout=600)
                                   for _ in range(rounds)]
            mapping = config_mapping(env)
            path = socket_path(env)
            out["hosts_raw"] = raw_times(path, frame({"type": "hosts", "config": mapping,
                                                      "refresh": False}), rounds)
            out["best"] = raw_times(path, frame({"type": "best", "config": mapping}),
                                    rounds * 10)
    return out


def part_hosts(s: Setting) -> list[dict[str, Any]]:
    results = []
    for count in s.args.host_counts:
        started = time.perf_counter()
        results.append(one_count(s, count))
        print(f"hosts {count}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return results


# --- 2. clients ------------------------------------------------------------------------------


def part_clients(s: Setting) -> dict[str, Any]:
    """Concurrent `best` (raw clients) and `distsvc-run true` against the bed's 4 hosts."""
    env = s.home("clients", daemon=True, hosts=s.bed.hosts)
    argv = [str(DISTSVC_RUN), "true"]
    logs = s.tmp / "clients-logs"
    logs.mkdir()
    out: dict[str, Any] = {"hosts": len(s.bed.hosts), "levels": []}
    with daemon(env, s.log("clients")) as process:
        refresh_through(env)
        path = socket_path(env)
        best = frame({"type": "best", "config": config_mapping(env)})
        for _ in range(5):
            time_call(argv, env, s.bed.home)
        burst(argv, env, s.bed.home, max(s.args.client_counts), logs)  # the pool grows
        for clients in s.args.client_counts:
            queries = concurrent_raw(path, best, clients,
                                     max(s.args.rounds * 40 // clients, 5), process.pid)
            calls = []
            walls = []
            for _ in range(max(1, s.args.rounds * 3 // clients)):
                done = burst(argv, env, s.bed.home, clients, logs)
                failed = [c for c in done if c.status != 0]
                if failed:
                    raise RuntimeError(f"{len(failed)} of {clients} distsvc-run failed: "
                                       f"exit {failed[0].status}: {failed[0].error}")
                calls += [c.ended - c.started for c in done]
                walls.append(max(c.ended for c in done) - min(c.started for c in done))
            out["levels"].append({"clients": clients, "best": queries, "run": calls,
                                  "walls": walls})
            print(f"clients {clients}: done", file=sys.stderr)
    return out


# --- report ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Figure:
    name: str
    values: list[float]
    shown: list[str]
    expected: str  # what the figure should do as the size grows, and why
    cost: bool = True  # a cost (judged for growing worse than linearly), not a count


def growth_table(label: str, sizes: Sequence[int], figures: Sequence[Figure]) -> list[str]:
    """A markdown table: one row per figure, one column per size, then the growth of each
    step (common.growth: ratio and exponent) and what is expected."""
    steps = [f"growth {a}->{b}" for a, b in itertools.pairwise(sizes)]
    out = [row("figure", *(f"{label}={n}" for n in sizes), *steps, "expected"),
           "|---|" + "---:|" * (len(sizes) + len(steps)) + "---|"]
    for figure in figures:
        cells = [growth_cell(g) for g in growth(list(zip(sizes, figure.values,
                                                          strict=True)))[1:]]
        out.append(row(figure.name, *figure.shown, *cells, figure.expected))
    return out


def worst_exponent(figures: Sequence[Figure], sizes: Sequence[int]) -> tuple[str, float]:
    """The figure and exponent of the steepest step of any cost figure."""
    steep = [(f.name, g[1]) for f in figures if f.cost
             for g in growth(list(zip(sizes, f.values, strict=True))) if g is not None]
    return max(steep, key=lambda item: item[1]) if steep else ("-", 0.0)


def ms_figure(name: str, values: list[float], expected: str) -> Figure:
    return Figure(name, values, [ms(v) for v in values], expected)


def host_figures(results: Sequence[dict[str, Any]]) -> list[Figure]:
    def each(key: str, pick: Any = None) -> list[float]:
        return [pick(r[key]) if pick else r[key] for r in results]

    rss_idle, rss_warm = each("rss_idle"), each("rss_warm")
    counts = each("hosts")
    measured = [float(sum(r["scan_states"].values())) for r in results]
    cap = distsvc.scanplan.MAX_PER_PASS
    return [
        Figure("scan, no daemon: hosts measured by the pass", measured,
               [f"{v:.0f}" for v in measured],
               f"linear up to {cap} (`scanplan.MAX_PER_PASS`), then flat", cost=False),
        Figure("scan, no daemon: wall s", each("scan_wall"),
               [f"{v:.2f}" for v in each("scan_wall")],
               "linear in the hosts measured: probes each"),
        Figure("scan, no daemon: CPU s", each("scan_cpu"),
               [f"{v:.2f}" for v in each("scan_cpu")],
               "linear in the hosts measured: one handshake each"),
        ms_figure("`distsvc hosts`, no daemon: median ms", each("hosts_off", median),
                  "flat start-up, plus linear in rows (read, rank, print)"),
        ms_figure("`distsvc hosts` through the daemon: median ms",
                  each("hosts_daemon", median), "as above, the rows from the daemon"),
        ms_figure("raw `hosts` request: median ms", each("hosts_raw", median),
                  "linear in rows: every row encoded"),
        ms_figure("raw `best` request: median ms", each("best", median),
                  "flat: ranks from memory (linear only in a scan of the state)"),
        ms_figure("raw `best` request: p99 ms", each("best", p99), "flat, as the median"),
        Figure("refresh through the daemon: wall s", each("refresh_wall"),
               [f"{v:.2f}" for v in each("refresh_wall")], "linear: connects to every host"),
        Figure("daemon RSS idle MiB", rss_idle, [f"{v:.1f}" for v in rss_idle],
               "flat: the configuration is small"),
        Figure("daemon RSS with N warm connections MiB", rss_warm,
               [f"{v:.1f}" for v in rss_warm], "idle + linear in connections"),
        Figure("... above idle, per host KiB",
               [(w - i) * 1024 / n for w, i, n in zip(rss_warm, rss_idle, counts, strict=True)],
               [f"{(w - i) * 1024 / n:.0f}" for w, i, n in zip(rss_warm, rss_idle, counts,
                                                               strict=True)],
               "flat: the cost of one connection"),
    ]


def client_figures(levels: Sequence[dict[str, Any]]) -> list[Figure]:
    best_rate = [lv["best"].rate for lv in levels]
    return [
        ms_figure("raw `best` from N clients: median ms",
                  [median(lv["best"].latencies) for lv in levels],
                  "flat until the daemon is saturated, then linear (a queue)"),
        ms_figure("raw `best`: p99 ms", [p99(lv["best"].latencies) for lv in levels],
                  "as the median"),
        Figure("raw `best`: queries/s", best_rate, [f"{v:.0f}" for v in best_rate],
               "rising to the daemon's capacity, then flat"),
        ms_figure("`distsvc-run true`, N at once: each call's median ms",
                  [median(lv["run"]) for lv in levels],
                  "flat while CPUs are free; then linear in N: each client process needs "
                  "its own CPU time on 2 CPUs"),
        ms_figure("`distsvc-run true`: p99 ms", [p99(lv["run"]) for lv in levels],
                  "as the median"),
        ms_figure("`distsvc-run true`: wall of N at once, median ms",
                  [median(lv["walls"]) for lv in levels], "as the median"),
    ]


def report_hosts(results: Sequence[dict[str, Any]]) -> list[str]:
    sizes = [r["hosts"] for r in results]
    figures = host_figures(results)
    out = ["### 1. Hosts configured", ""]
    out += ["Hosts on 127.0.10.1, 127.0.10.2, ... (one port), " + ", ".join(
                f"{r['hosts']} served by {r['sshd']} sshd" for r in results)
            + f" (at most {LISTEN_PER_SSHD} addresses each, dealt out in turn), at OpenSSH's "
            "defaults; distsvc's defaults but `max_age = 3600` and (hosts part) "
            f"`{PROBE_TIMEOUT[0]}` (a probe's time includes its handshake, queued behind the "
            "scan's other 31 in one process: on this shared 2-CPU machine that passed the "
            "default 2 s and hosts that were up came out `unknown`).", ""]
    out += growth_table("hosts", sizes, figures)
    name, exponent = worst_exponent(figures, sizes)
    out += ["", f"Steepest step: {name}, exponent {exponent:.2f}"
            + (" (**worse than linear**)." if exponent > 1.15 else ".")]
    out += ["", "Hosts up: " + "; ".join(
        f"{r['hosts']}: scan {dict(r['scan_states'])}"
        + (f" (not up: {'; '.join(f'{n}x {e}' for e, n in r['scan_errors'])})"
           if r["scan_errors"] else "") + f", refresh {r['refresh_up']} up, "
        f"{r['connections']} connections held, refresh CPU {r['refresh_cpu']:.2f} s"
        for r in results) + ".", ""]
    return out


def report_clients(r: dict[str, Any]) -> list[str]:
    levels = r["levels"]
    sizes = [lv["clients"] for lv in levels]
    figures = client_figures(levels)
    out = ["### 2. Concurrent clients", ""]
    out += [f"One warm daemon with the bed's {r['hosts']} hosts (OpenSSH's defaults). `best` "
            "from forked processes looping on a pre-encoded frame over a raw socket "
            "(`common.raw_query`: the clients cost as little as any could, yet share the 2 "
            "CPUs); `distsvc-run true` as N processes started at once (a barrier), repeated "
            "so every level has about as many calls.", ""]
    out += growth_table("clients", sizes, figures)
    name, exponent = worst_exponent(figures, sizes)
    out += ["", f"Steepest step: {name}, exponent {exponent:.2f}"
            + (" (**worse than linear**)." if exponent > 1.15 else "."), ""]
    return out


def report(info: dict[str, str], command: str, results: dict[str, Any]) -> str:
    out = preamble(
        DOCS_HEADING,
        "Measured by `bench/scaling_bench.py` against OpenSSH servers on loopback addresses "
        "(`tests/sshbed.py`'s settings), every client with a clean home and its runtime "
        "directory on a tmpfs. Growth: the ratio to the previous column and, in brackets, "
        "its exponent (log ratio / log size ratio): ^0 is flat, ^1 linear.", command, info)
    if "hosts" in results:
        out += report_hosts(results["hosts"])
    if "clients" in results:
        out += report_clients(results["clients"])
    return "\n".join(out)


# --- main ------------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    results: dict[str, Any] = {}
    observed = []
    described = machine()  # before: the code measured is the working tree at the start
    with setting(args, "distsvc-scale-", observed) as s:
        for part, function in (("hosts", part_hosts), ("clients", part_clients)):
            if part not in args.skip:
                started = time.perf_counter()
                results[part] = function(s)
                print(f"{part}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    info = {**described, "tmpfs for runtime directories": str(TMPFS),
            "conditions": "; ".join(observed)}
    return results, info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"hosts {QUICK_HOST_COUNTS} and fewer rounds, for trying it")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed calls per figure and size (default 20, --quick 5)")
    parser.add_argument("--host-counts", type=counts, default=None,
                        help="host counts to measure, e.g. 1,10 (default: 1,10,100,1000; "
                             "--quick: 1,10,100)")
    parser.add_argument("--client-counts", type=counts, default=CLIENT_COUNTS,
                        help="concurrent clients to measure (default: 1,10,32,100)")
    parser.add_argument("--skip", action="append", default=[], choices=PARTS,
                        help="leave a part out (then docs are not written)")
    parser.add_argument("--no-docs", action="store_true",
                        help=f"only print; do not update {DOCS.relative_to(ROOT)}")
    args = parser.parse_args()
    args.rounds = args.rounds or (5 if args.quick else 20)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.host_counts = args.host_counts or (QUICK_HOST_COUNTS if args.quick else HOST_COUNTS)
    if max(args.host_counts) > 250 * PER_SUBNET:
        parser.error(f"--host-counts: at most {250 * PER_SUBNET}")
    reason = sshbed.can_run()
    if reason:
        print(f"scaling_bench: {reason}", file=sys.stderr)
        return 2
    limit = raise_fd_limit(FD_LIMIT)  # the daemon inherits it
    reason = shortfall(max(args.host_counts), limit)
    if reason:
        print(f"scaling_bench: this machine cannot hold the largest count: {reason}",
              file=sys.stderr)
        return 2
    command = shlex.join([".venv/bin/python", "bench/scaling_bench.py", *sys.argv[1:]])
    results, info = bench(args)
    section = report(info, command, results)
    trial = args.host_counts != HOST_COUNTS or args.client_counts != CLIENT_COUNTS
    publish(DOCS_HEADING, section, not args.no_docs and not trial, bool(args.skip))
    if trial and not args.no_docs:
        print("(--quick or other counts: docs not written)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
