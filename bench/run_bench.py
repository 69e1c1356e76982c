"""How much does `distsvc-run` cost next to plain `ssh`, with no daemon to keep connections?

Issue 2 asks whether distsvc needs a resident daemon. Without one, every `distsvc-run` is a
fresh Python process that imports paramiko, reads the shared state file, connects and
authenticates, and then relays the command's streams through Python. This script measures
that cost against the tools a user would otherwise reach for, all against the SAME single
local OpenSSH server (one host of the test bed in tests/sshbed.py), in one run:

1. Latency of a trivial command (`true`), median and p90 over --runs calls, interleaved
   round by round so that drift on the machine affects every variant alike:
   - `ssh ... true` with a fresh connection each time (key exchange + authentication);
   - the same `ssh` through an already open ControlMaster connection (the floor a daemon
     holding connections open could aim for);
   - `distsvc-run true` with a cached load measurement (the common case: measurements are
     reused for `max_age` seconds). Its config sets `max_age = 3600` so that no measured call
     happens to refresh the cache; with the default 30 s, one call in every 30 s pays
     the next row's cost instead;
   - `distsvc-run true` with `max_age = 0.001`, so every call probes: connect, run the probe,
     then run the command on the probe's connection (the cold path).
2. Throughput: 200 MiB of zeros (`head -c 209715200 /dev/zero` on the host) read from the
   client's stdout by this script, which counts the bytes; through ssh (fresh and
   multiplexed), through distsvc-run, and a local pipe as the ceiling.
3. The client's fixed costs: `distsvc-run true` with no hosts configured (it runs the command
   locally), the interpreter's bare start-up, and `python -X importtime` of the client's
   entry module and of the SSH adapter (which pulls in paramiko).

Every distsvc-run here runs with DISTSVC_DAEMON=off: since issue 3 a client without a daemon
falls back to this in-process path but also starts a daemon in the background, which would
then serve the following calls; the daemon path is measured by bench/daemon_bench.py.

Every client gets a clean HOME made the way tests/conftest.py's Client makes one, and `ssh`
is run with `-F /dev/null` and explicit key and known_hosts, so nobody's real ~/.ssh takes
part. Needs root (the test bed creates a user for the login and starts sshd).

A test run (or anything else) at the same time competes for the CPUs and skews the figures;
the report records the load average and other test beds' sshd seen before and after.

Usage (as root, from the repository root):

    .venv/bin/python bench/run_bench.py [--runs N] [--stream-runs N] [--no-docs] [--profile]
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    DISTSVC_RUN,
    DOCS,
    MIB,
    PYTHON,
    ROOT,
    STREAM_BYTES,
    STREAM_COMMAND,
    ImportTimes,
    Variant,
    client_home,
    conditions,
    control_master,
    import_times,
    latency_rounds,
    machine,
    median,
    ms,
    p90,
    preamble,
    publish,
    ssh_command,
    ssh_env,
    sshbed,
    stray_sshd,
    stream_rounds,
    write_config,
)

DOCS_HEADING = "## distsvc-run without a daemon (issue 2)"
PARAMIKO_KEX = "curve25519-sha256"  # what paramiko negotiates with OpenSSH (see the report)


def profile_one_call(env: dict[str, str], cwd: Path, top: int = 25) -> str:
    """cProfile of one `distsvc-run true` (cached measurement): the top costs, cumulative."""
    with tempfile.TemporaryDirectory(prefix="distsvc-bench-prof-") as tmp:
        out = Path(tmp) / "run.prof"
        subprocess.run([str(PYTHON), "-m", "cProfile", "-o", str(out), str(DISTSVC_RUN), "true"],
                       env=env, cwd=cwd, stdin=subprocess.DEVNULL, check=True, timeout=60)
        script = ("import pstats, sys; "
                  "pstats.Stats(sys.argv[1]).sort_stats('cumulative').print_stats(int(sys.argv[2]))")
        return subprocess.run([str(PYTHON), "-c", script, str(out), str(top)],
                              capture_output=True, text=True, check=True).stdout


def negotiated_algorithms(bed: sshbed.Bed, host: sshbed.Host, ssh: list[str],
                          env: dict[str, str], client_env: dict[str, str]) -> dict[str, str]:
    """Key exchange and server-to-client cipher each client negotiated with the server.

    The key exchange is part of every fresh connection's cost; the cipher bounds throughput.
    """
    verbose = subprocess.run([ssh[0], "-v", *ssh[1:], "true"], env=env, capture_output=True,
                             text=True, timeout=30).stderr
    kex = re.search(r"kex: algorithm: (\S+)", verbose)
    cipher = re.search(r"kex: server->client cipher: (\S+) MAC: (\S+)", verbose)
    openssh = (f"kex {kex[1]}, cipher {cipher[1]} (MAC {cipher[2]})" if kex and cipher
               else "?")
    script = """if True:
        import logging, os, sys, paramiko
        logging.basicConfig(level=logging.DEBUG, format="%(message)s")
        client = paramiko.SSHClient()
        client.load_host_keys(os.path.expanduser("~/.ssh/known_hosts"))
        client.connect(sys.argv[1], port=int(sys.argv[2]), username=sys.argv[3],
                       allow_agent=False)
        t = client.get_transport()
        print(t.remote_cipher, t.remote_mac)
        client.close()
    """
    result = subprocess.run([str(PYTHON), "-c", script, host.address, str(host.port), bed.user],
                            env=client_env, capture_output=True, text=True, timeout=30)
    kex = re.search(r"^Kex: (\S+)", result.stderr, re.M)
    cipher_mac = result.stdout.split()
    paramiko = (f"kex {kex[1]}, cipher {cipher_mac[0]} (MAC {cipher_mac[1]})"
                if result.returncode == 0 and kex and len(cipher_mac) == 2 else "?")
    return {"OpenSSH ssh": openssh, "paramiko (distsvc-run)": paramiko}


# --- report ----------------------------------------------------------------------------------


def report(info: dict[str, str], command: str, runs: int, stream_runs: int,
           latency: list[tuple[Variant, list[float]]],
           stream: list[tuple[Variant, list[float]]], imports: dict[str, ImportTimes],
           ciphers: dict[str, str]) -> str:
    out = preamble(
        DOCS_HEADING,
        "Measured by `bench/run_bench.py` against one local OpenSSH server (an `sshd -D` of "
        "the test bed in `tests/sshbed.py` on 127.0.0.2), with clean client homes and "
        "`DISTSVC_DAEMON=off` (the in-process path, no daemon started); `ssh` "
        "gets `-F /dev/null` and its key and known_hosts explicitly. Each figure is the "
        "wall time of `subprocess.run` (`time.perf_counter`), stdin at end-of-file.",
        command, info)

    out += [f"### Latency of a trivial command ({runs} calls each, interleaved)", ""]
    out += ["| variant | command | median ms | p90 ms |", "|---|---|---:|---:|"]
    for variant, values in latency:
        out.append(f"| {variant.name} | `{variant.shown}` | {ms(median(values))} | "
                   f"{ms(p90(values))} |")
    out += [""]
    out += [f"- *paramiko's kex*: ssh made to use `{PARAMIKO_KEX}` (the algorithm paramiko "
            "negotiates, see below) instead of OpenSSH's default post-quantum hybrid.",
            "- *cached*: the load measurement is reused (config `max_age = 3600`, so no measured "
            "call refreshes it; with the default 30 s one call per 30 s is a *probing* call).",
            "- *probing*: `max_age = 0.001`, so every call connects, runs the load probe, and "
            "runs the command on the probe's connection: what the first call after `max_age` "
            "costs.",
            "- *no hosts*: no config file, so distsvc-run runs the command on this machine.", ""]

    out += [f"### Streaming {STREAM_BYTES // MIB} MiB of stdout ({stream_runs} runs each)", ""]
    out += [f"`{STREAM_COMMAND}` on the host; the benchmark reads the client's stdout and counts "
            "the bytes.", ""]
    out += ["| path | command | median s | MiB/s (at median) | fastest s | slowest s |",
            "|---|---|---:|---:|---:|---:|"]
    for variant, values in stream:
        m = median(values)
        out.append(f"| {variant.name} | `{variant.shown}` | {m:.2f} | "
                   f"{STREAM_BYTES / MIB / m:.0f} | {min(values):.2f} | {max(values):.2f} |")
    out += ["", "Negotiated (server to client): "
            + "; ".join(f"{k}: {v}" for k, v in ciphers.items()) + ".", ""]

    out += ["### Import time of the client (`python -X importtime`, median of 7)", ""]
    out += ["| `import ...` | module, cumulative ms | all imports incl. start-up, ms | "
            "loads paramiko | heaviest imports made by distsvc modules, cumulative ms |",
            "|---|---:|---:|---|---|"]
    for module, figures in imports.items():
        heaviest = ", ".join(f"{name} {ms_:.1f}" for name, ms_ in figures.heaviest)
        out.append(f"| `{module}` | {figures.module:.1f} | {figures.total:.1f} | "
                   f"{'yes' if figures.paramiko else 'no'} | {heaviest} |")
    out += [""]
    return "\n".join(out)


# --- main ------------------------------------------------------------------------------------


def bench(args: argparse.Namespace, command: str) -> str:
    observed = []
    with tempfile.TemporaryDirectory(prefix="distsvc-bench-") as tmp, \
            sshbed.running(1) as bed:
        observed.append(f"before: {conditions(bed.root)}")
        tmpdir = Path(tmp)
        tmpdir.chmod(0o700)
        host = bed.hosts[0]
        cwd = bed.home
        # daemon=False: DISTSVC_DAEMON=off, so these clients work in-process (the path this
        # script measures) and never start a daemon behind its back.
        cached = client_home(bed, tmpdir / "cached", daemon=False)
        write_config(cached, bed, [host], max_age=3600)
        probing = client_home(bed, tmpdir / "probing", daemon=False)
        write_config(probing, bed, [host], max_age=0.001)
        local = client_home(bed, tmpdir / "local", daemon=False)
        ssh_home = tmpdir / "ssh"
        plain = ssh_env(ssh_home)
        ssh = ssh_command(bed, host, ssh_home)
        run = [str(DISTSVC_RUN)]
        bare = {"PATH": plain["PATH"], "LANG": "C.UTF-8"}

        with control_master(ssh, plain, tmpdir / "cm") as muxed:
            latency_variants = [
                Variant("ssh, fresh connection", "ssh -F /dev/null -p PORT -i KEY -o ... "
                        "user@addr true", [*ssh, "true"], plain),
                # OpenSSH 9.x prefers a post-quantum hybrid key exchange that paramiko lacks;
                # this row is ssh with the key exchange paramiko negotiates, like for like.
                Variant("ssh, fresh, paramiko's kex", "ssh ... -o KexAlgorithms="
                        f"{PARAMIKO_KEX} user@addr true",
                        [*ssh[:-1], "-o", f"KexAlgorithms={PARAMIKO_KEX}", ssh[-1], "true"],
                        plain),
                Variant("ssh, ControlMaster", "ssh ... -o ControlPath=CM user@addr true",
                        [*muxed, "true"], plain),
                Variant("distsvc-run, cached", "distsvc-run true", [*run, "true"], cached),
                Variant("distsvc-run, probing", "distsvc-run true", [*run, "true"], probing),
                Variant("distsvc-run, no hosts", "distsvc-run true", [*run, "true"], local),
                Variant("local `true`", "true", ["true"], bare),
                Variant("python -c pass", ".venv/bin/python -c pass",
                        [str(PYTHON), "-c", "pass"], bare),
            ]
            started = time.perf_counter()
            latency = latency_rounds(latency_variants, cwd, args.runs)
            print(f"latency: {time.perf_counter() - started:.1f} s", file=sys.stderr)

            stream_variants = [
                Variant("local pipe (no ssh)", f"sh -c '{STREAM_COMMAND}'",
                        ["sh", "-c", STREAM_COMMAND], bare),
                Variant("ssh, fresh connection", f"ssh ... user@addr '{STREAM_COMMAND}'",
                        [*ssh, STREAM_COMMAND], plain),
                Variant("ssh, ControlMaster", f"ssh ... -o ControlPath=CM user@addr "
                        f"'{STREAM_COMMAND}'", [*muxed, STREAM_COMMAND], plain),
                Variant("distsvc-run, cached", f"distsvc-run {STREAM_COMMAND}",
                        [*run, *STREAM_COMMAND.split()], cached),
            ]
            started = time.perf_counter()
            stream = stream_rounds(stream_variants, cwd, args.stream_runs)
            print(f"streaming: {time.perf_counter() - started:.1f} s", file=sys.stderr)
            ciphers = negotiated_algorithms(bed, host, ssh, plain, cached)
        if args.profile:
            print(profile_one_call(cached, cwd))
        imports = {module: import_times(module)
                   for module in ("distsvc.commands.run", "distsvc.adapters.ssh")}
        observed.append(f"after: {conditions(bed.root)}")
        bed_root = bed.root
    stray = stray_sshd(bed_root)
    if stray:
        raise RuntimeError(f"sshd processes left behind: {stray}")
    info = {**machine(), "conditions": "; ".join(observed)}
    return report(info, command, args.runs, args.stream_runs, latency, stream, imports, ciphers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="calls per latency variant")
    parser.add_argument("--stream-runs", type=int, default=5, help="runs per streaming path")
    parser.add_argument("--no-docs", action="store_true",
                        help=f"only print; do not update {DOCS.relative_to(ROOT)}")
    parser.add_argument("--profile", action="store_true",
                        help="also print a cProfile of one cached `distsvc-run true`")
    args = parser.parse_args()
    if args.runs < 1 or args.stream_runs < 1:
        parser.error("--runs and --stream-runs must be at least 1")
    reason = sshbed.can_run()
    if reason:
        print(f"run_bench: {reason}", file=sys.stderr)
        return 2
    command = shlex.join([".venv/bin/python", "bench/run_bench.py", *sys.argv[1:]])
    section = bench(args, command)
    publish(DOCS_HEADING, section, not args.no_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
