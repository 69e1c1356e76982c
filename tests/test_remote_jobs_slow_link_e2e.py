"""A remote job's output over a slow link (review8): the host's watcher must make progress.

A look (jobs/remote.monitor_script) is one SSH session bounded by SCRIPT_TIMEOUT as a whole.
When it fetched a fixed 4 MiB of each stream, a link slower than about 2.2 Mbit/s per chatty
job timed every look out: its bytes were thrown away, the host shown down, and the job's
output never mirrored nor its end recorded. Now a look's budget starts at 1 MiB for all jobs
and adapts to how long looks take. The relay here passes 120 kB/s each way (about 1 Mbit/s)
to a real sshd of the bed.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

import pytest

from conftest import Client, TcpProxy
from test_remote_jobs_e2e import job, start, status

RATE = 120_000  # bytes per second each way


class SlowProxy(TcpProxy):
    @staticmethod
    def _pipe(source: Any, sink: Any) -> None:
        try:
            while data := source.recv(4096):
                sink.sendall(data)
                time.sleep(len(data) / RATE)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.mark.timeout(300)
def test_output_is_mirrored_over_a_slow_link(daemon_client: Client) -> None:
    c = daemon_client
    host = c.bed.hosts[0]
    proxy = SlowProxy(host.address, host.port).__enter__()
    with open(c.home / ".ssh" / "known_hosts", "a") as known:
        known.write(f"[127.0.0.1]:{proxy.port} {host.host_key}\n")
    c.configure([], unknown=[{"name": "slow", "address": "127.0.0.1", "port": proxy.port,
                              "user": c.bed.user}])
    size = (4 << 20) + (512 << 10)  # 39 s at RATE; one look alone would need 35 s of it
    record = start(c, "--host", "slow", "head", "-c", str(size), "/dev/zero")
    mirror = c.home / ".local/state/distsvc/jobs" / record["id"] / "stdout"
    try:
        # Generously bounded (2.5 times what the link needs); the job itself ends at once.
        done = job(c, "wait", record["id"], check=False, timeout=100)
        assert done.returncode == 0, status(c, record["id"])
        assert mirror.stat().st_size == size
    except Exception:
        job(c, "stop", record["id"], check=False)
        raise
    finally:
        proxy.cut()
