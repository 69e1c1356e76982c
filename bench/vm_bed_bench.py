"""What the QEMU VM bed (tests/vmbed.py) costs: boot to ssh and to the user's manager, a
command over the reused ssh connection, and QEMU's memory. Writes the "VM bed" section of
docs/benchmarks.md.

Each boot is timed from starting QEMU (the kernel and its initramfs cached already: the first
boot on a machine also downloads and unpacks the kernel, about 10 s more). QEMU's CPU time
is read from /proc when the user's manager answers: on a shared machine the wall times follow
the other load, the CPU time much less.

Usage (as root, from the repository root): .venv/bin/python bench/vm_bed_bench.py [--boots N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # puts tests/ on sys.path

import vmbed

HEADING = "## VM bed (issue 7)"
COMMANDS = 20
HEAVY = 5


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(call: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def one_boot() -> dict[str, list[float]]:
    with vmbed.booted() as vm:
        figures = {"ssh": [vm.timings["ssh"]], "manager": [vm.timings["manager"]],
                   "cpu": [cpu_seconds(vm.qemu.pid)]}
        figures["root true"] = timed(lambda: vm.run(["true"]), COMMANDS)
        figures["user true"] = timed(lambda: vm.run_as_user(["true"]), COMMANDS)
        figures["user python"] = timed(
            lambda: vm.run_as_user(["python3", "-c", "import distsvc, pystemd"]), HEAVY)
        figures["user systemd-run"] = timed(
            lambda: vm.run_as_user(["systemd-run", "--user", "--wait", "--quiet", "true"]),
            HEAVY)
        rss = int(next(line.split()[1] for line in
                       Path(f"/proc/{vm.qemu.pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:")))
        figures["rss"] = [rss / 1024]
    return figures


def report(runs: list[dict[str, list[float]]], load: list[str]) -> str:
    merged: dict[str, list[float]] = {}
    for figures in runs:
        for key, values in figures.items():
            merged.setdefault(key, []).extend(values)
    out = common.preamble(
        HEADING,
        "Measured by `bench/vm_bed_bench.py`: boots of the VM bed (`tests/vmbed.py`: QEMU 7.2 "
        "TCG, `-smp 2 -m 1024`, Debian's 6.1 kernel, root an overlay of the host's `/` over "
        "virtio-9p), each timed from starting QEMU, then commands over its reused ssh "
        "connection (wall time of `VM.run`/`VM.run_as_user`, ssh and the remote shell "
        "included).",
        ".venv/bin/python bench/vm_bed_bench.py", {**common.machine(),
                                                   "load average": " -> ".join(load)})
    out += ["| what | runs | median | min | max |", "|---|---:|---:|---:|---:|"]
    rows = [("boot to root's ssh login", "ssh", "s"),
            ("boot to the test user's manager answering", "manager", "s"),
            ("QEMU CPU time by then", "cpu", "s"),
            ("`true` as root", "root true", "ms"),
            ("`true` as the test user", "user true", "ms"),
            ("`python3 -c 'import distsvc, pystemd'` (venv)", "user python", "ms"),
            ("`systemd-run --user --wait true`", "user systemd-run", "ms"),
            ("QEMU resident memory (MiB), after the commands", "rss", "")]
    for label, key, unit in rows:
        values = merged[key]
        scale = 1000 if unit == "ms" else 1
        cells = [f"{v * scale:.1f}" + (f" {unit}" if unit else "")
                 for v in (common.median(values), min(values), max(values))]
        out.append(f"| {label} | {len(values)} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=3)
    args = parser.parse_args()
    reason = vmbed.can_boot()
    if reason:
        print(f"vm_bed_bench: {reason}", file=sys.stderr)
        return 2
    vmbed.kernel()  # the download and initramfs, if any, are not part of a boot
    load = [Path("/proc/loadavg").read_text().split(" ", 3)[:3]]
    runs = [one_boot() for _ in range(args.boots)]
    load.append(Path("/proc/loadavg").read_text().split(" ", 3)[:3])
    section = report(runs, [" ".join(x) for x in load])
    common.write_docs(HEADING, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
