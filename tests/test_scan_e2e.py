"""`distsvc scan` against real OpenSSH servers: one pass measures every due host with the
default probe (shell builtins only) and reports unreachable and refused hosts, in-process
and through a daemon."""

from __future__ import annotations

import json
import os
import socket

import conftest


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_pass_measures_every_host_and_reports_the_unreachable(
        client: conftest.Client) -> None:
    bed = client.bed
    client.configure(unknown=[{"name": "gone", "address": "127.0.0.1", "port": closed_port(),
                               "user": bed.user}])
    # h4's key is not known: refused, and said so
    (client.home / ".ssh" / "known_hosts").write_text(
        "".join(h.known_hosts_line + "\n" for h in bed.hosts[:3]))
    result = client.run("distsvc", "scan", env={"DISTSVC_LOG": "info"})
    assert result.returncode == 0, result.stderr
    assert b"scan pass done" in result.stderr
    listed = json.loads(client.run("distsvc", "hosts", "--json").stdout)["hosts"]
    rows = {r["host"]: r for r in listed}
    for host in bed.hosts[:3]:
        row = rows[host.name]
        assert row["state"] == "up", row
        # the default probe's figures, of this machine (every bed host is this machine)
        assert row["cpus"] == len(os.sched_getaffinity(0)), row
        assert row["load1"] is not None and row["mem_available_kb"], row
    assert rows["h4"]["state"] == "refused", rows["h4"]
    assert "host key not known" in rows["h4"]["error"]
    assert rows["gone"]["state"] == "unknown", rows["gone"]
    assert "connection refused" in rows["gone"]["error"]
