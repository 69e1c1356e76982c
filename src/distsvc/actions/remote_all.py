"""Running one command on every host at once, output prefixed by host (distssh's runonall)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import select
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import TextIO

import distsvc.actions.relay
import distsvc.adapters.ssh
import distsvc.config
import distsvc.errors
import distsvc.remote

UNREACHABLE = 255


@dataclasses.dataclass
class Outcome:
    host: str
    status: int
    error: str | None = None


class _PrefixedWriter:
    """Whole lines, each prefixed by its host, never interleaved mid-line between hosts."""

    lock = threading.Lock()

    def __init__(self, prefix: str, stream: TextIO) -> None:
        self.prefix = prefix
        self.stream = stream
        self.pending = b""

    def feed(self, data: bytes, final: bool = False) -> None:
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        if final and self.pending:
            lines, self.pending = [*lines, self.pending], b""
        if lines:
            text = "".join(f"{self.prefix}{line.decode('utf-8', 'replace')}\n" for line in lines)
            with self.lock:
                self.stream.write(text)
                self.stream.flush()


def _run_on(host: distsvc.config.Host, argv: Sequence[str], workdir: str | None,
            env: Mapping[str, str], config: distsvc.config.Config,
            tokens: dict[str, tuple[distsvc.adapters.ssh.Connection, str]]) -> Outcome:
    try:
        connection = distsvc.adapters.ssh.connect(
            distsvc.adapters.ssh.resolve(host, config.host_key_policy), config.connect_timeout)
    except distsvc.errors.HostUnreachable as error:
        return Outcome(host.name, UNREACHABLE, error.reason)
    try:
        token = distsvc.remote.new_token()
        tokens[host.name] = (connection, token)
        process = connection.open(distsvc.remote.wrapper(argv, workdir, token, False))
        process.write(distsvc.remote.environment_script(env).encode())
        process.close_stdin()
        out = _PrefixedWriter(f"{host.name}: ", sys.stdout)
        err = _PrefixedWriter(f"{host.name}: ", sys.stderr)
        while True:
            select.select([process.fileno()], [], [], 1.0)
            out.feed(process.read_stdout())
            err.feed(process.read_stderr())
            if process.finished() or process.connection_lost():
                break
        out.feed(b"", final=True)
        err.feed(b"", final=True)
        status = process.exit_status()
        if status < 0:
            return Outcome(host.name, UNREACHABLE, "connection lost")
        return Outcome(host.name, status)
    finally:
        tokens.pop(host.name, None)
        connection.close()


def run_everywhere(argv: Sequence[str], workdir: str | None, env: Mapping[str, str],
                   config: distsvc.config.Config) -> list[Outcome]:
    """Run argv on every host concurrently; Ctrl-C and SIGTERM reach every one of them."""
    tokens: dict[str, tuple[distsvc.adapters.ssh.Connection, str]] = {}

    def forward(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name.removeprefix("SIG")
        for connection, token in list(tokens.values()):
            threading.Thread(target=connection.run, daemon=True,
                             args=(distsvc.remote.kill_command(token, name),)).start()

    previous = {s: signal.signal(s, forward) for s in distsvc.actions.relay.RELAYED_SIGNALS}
    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, len(config.hosts))) as pool:
            futures = [pool.submit(_run_on, h, argv, workdir, env, config, tokens)
                       for h in config.hosts]
            while not all(f.done() for f in futures):
                concurrent.futures.wait(futures, timeout=0.2)
            return [f.result() for f in futures]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
