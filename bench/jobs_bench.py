"""What does a local job cost next to systemd-run, and how fast is its output followed?

Boots the systemd container of tests/container.py (a real user manager; cgroups are hybrid
there, so limits are off: this measures the job machinery, not enforcement), installs the
user units from systemd/ pointing at this venv, enables distsvc.socket and runs
bench/jobs_inside.py as the container's user, which measures, interleaved round by round:

1. job start latency: `distsvc job start true` (the client process included), the same
   `job_start` request sent from a warm process (the daemon's share), `systemd-run --user
   true` and `systemd-run --user --scope true`; then start-and-wait against
   `systemd-run --user --wait true`. Medians and p99 of --rounds each.
2. `distsvc job logs --follow` of a job writing --gib GiB, next to `cat` of the finished file.
3. --followers concurrent followers of one job writing --followed MiB of random bytes: each
   one's throughput, every follower's byte count, the daemon's CPU time and RSS.

Usage (as root, from the repository root; a few minutes):

    .venv/bin/python bench/jobs_bench.py [--rounds N] [--gib N] [--followers N]
                                         [--followed MIB] [--no-docs]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

import common  # noqa: E402

import container  # noqa: E402

HEADING = "## Local jobs: start latency and following output (issue 7)"
UNITS = ("distsvc.socket", "distsvc.service")


def measure(rounds: int, gib: int, followers: int, followed: int) -> dict[str, object]:
    with container.booted() as c:
        c.run(["ln", "-sf", str(container.VENV_BIN / "distsvc"), "/usr/bin/distsvc"])
        for unit in UNITS:
            c.write_file(f"/usr/lib/systemd/user/{unit}", (ROOT / "systemd" / unit).read_text())
        c.run_as_user(["systemctl", "--user", "daemon-reload"])
        c.run_as_user(["systemctl", "--user", "enable", "--now", "distsvc.socket"])
        out = c.run_as_user(["python3", str(ROOT / "bench" / "jobs_inside.py"), str(rounds),
                             str(gib), str(followers), str(followed)], timeout=3600).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def report(data: dict[str, object], args: argparse.Namespace) -> str:
    latency: dict[str, list[float]] = data["latency"]  # type: ignore[assignment]
    follow: dict[str, float] = data["follow"]  # type: ignore[assignment]
    many: dict[str, object] = data["followers"]  # type: ignore[assignment]
    command = ("python bench/jobs_bench.py " + f"--rounds {args.rounds} --gib {args.gib} "
               f"--followers {args.followers} --followed {args.followed}")
    out = common.preamble(HEADING, "Measured in the booted systemd container "
                          "(tests/container.py), as its user, by bench/jobs_inside.py; "
                          "isolation off, limits none, so the job machinery itself is "
                          "compared with systemd-run.", command, common.machine())
    out += ["| what | median | p99 |", "|---|---|---|"]
    for name, values in latency.items():
        out.append(f"| `{name}` | {common.ms(common.median(values))} | "
                   f"{common.ms(common.p99(values))} |")
    gib = follow["bytes"] / (1 << 30)
    out += ["", f"`distsvc job logs --follow` of a job writing {gib:.0f} GiB: "
            f"{follow['bytes'] / follow['follow_s'] / (1 << 20):.0f} MiB/s "
            f"({follow['follow_s']:.1f} s, the writer included); `cat` of the finished file: "
            f"{follow['bytes'] / follow['cat_s'] / (1 << 20):.0f} MiB/s.", ""]
    rates: list[float] = many["rates_mib_s"]  # type: ignore[assignment]
    rss: list[int] = many["daemon_rss_kib"]  # type: ignore[assignment]
    out += [f"{many['count']} concurrent followers of one job writing {many['mib']} MiB of "
            f"random bytes: each got {many['sizes']} bytes; per follower "
            f"{min(rates):.0f}-{max(rates):.0f} MiB/s (median {common.median(rates):.0f}); "
            f"the daemon used {many['daemon_cpu_s']:.2f} s of CPU for all of them (it only "
            f"passes the files' fds: followers read them themselves), RSS "
            f"{rss[0] / 1024:.1f} -> {rss[1] / 1024:.1f} MiB.", ""]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--gib", type=int, default=1)
    parser.add_argument("--followers", type=int, default=100)
    parser.add_argument("--followed", type=int, default=64)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    text = report(measure(args.rounds, args.gib, args.followers, args.followed), args)
    print(text)
    if not args.no_docs:
        common.write_docs(HEADING, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
