"""`distsvc hosts` shows each configured cluster as Slurm sees it, against a real Slurm.

The cluster is tests/slurmbed.py's (a booted container); its login node is an sshd of the
container that lets the sshbed client's key in. From the machine's side the only way to learn
what the tests assert (the user's pending and running jobs, the node's state) is to ask Slurm
on the login node, so the figures prove the path. Inside the container, a cluster without a
login node is asked with Slurm's commands there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import conftest
import container
import jsondoc
import slurmbed
import sshbed

Bed = tuple[container.Container, container.SshHost, slurmbed.Cluster]


@pytest.fixture(scope="module")
def sbed() -> Iterator[Bed]:
    yield from slurmbed.cluster_fixture()


@pytest.fixture(scope="module")
def login(sbed: Bed, bed: sshbed.Bed) -> Iterator[container.SshHost]:
    """The login node for the sshbed's clients: an sshd inside with their key."""
    c, _, _ = sbed
    key = bed.client_key.with_name(bed.client_key.name + ".pub").read_text()
    with container.sshd(c, key, port_inside=2226) as host:
        yield host


def clusters_toml(*tables: dict[str, Any]) -> str:
    lines = []
    for table in tables:
        lines.append("[[clusters]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def configure(client: conftest.Client, login: container.SshHost, *more: dict[str, Any]) -> None:
    with open(client.home / ".ssh" / "known_hosts", "a") as known:
        known.write(login.known_hosts_line + "\n")
    client.configure(hosts=[], extra=clusters_toml(
        {"name": "hpc", "login": login.name, "address": login.address, "port": login.port,
         "user": login.user, "partition": "debug"}, *more))


def test_hosts_shows_the_cluster_through_its_login_node(
        sbed: Bed, login: container.SshHost, client: conftest.Client) -> None:
    c, _, cluster = sbed
    # A closed port on loopback: a login node that does not answer.
    configure(client, login, {"name": "gone", "login": "gone", "address": "127.0.0.1",
                              "port": 9, "user": login.user})
    held = c.run_as_user(["sbatch", "--parsable", "--hold", "--wrap", "true"]).stdout.strip()
    running = c.run_as_user(["sbatch", "--parsable", "--wrap", "sleep 300"]).stdout.strip()
    try:
        c.run_as_user(["sh", "-c", f"until squeue -h -j {running} -o %T | grep -qx RUNNING; "
                       "do sleep 0.2; done"], timeout=60)
        shown = client.run("distsvc", "hosts", "--json")
        assert shown.returncode == 0, shown.stderr
        document = json.loads(shown.stdout)
        assert jsondoc.problems(document, "hosts") == [], document
        rows = {r["cluster"]: r for r in document["clusters"]}
        hpc = rows["hpc"]
        assert (hpc["state"], hpc["reach"], hpc["partition"], hpc["error"]) == (
            "up", login.name, "debug", None), hpc
        assert hpc["nodes"] == {"mixed": 1} or hpc["nodes"] == {"allocated": 1}, hpc
        assert (hpc["cpus_total"], hpc["pending"], hpc["running"]) == (cluster.cpus, 1, 1)
        assert hpc["cpus_idle"] == cluster.cpus - 1
        gone = rows["gone"]
        assert gone["state"] == "unreachable" and gone["nodes"] == {}, gone
        assert "gone" in gone["error"] and "\n" not in gone["error"], gone
        table = client.run("distsvc", "hosts")
        assert table.returncode == 0, table.stderr
        text = table.stdout.decode()
        assert "no hosts configured" in text
        lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
        assert lines["CLUSTER"].split()[:3] == ["CLUSTER", "STATE", "REACH"]
        assert lines["hpc"].split()[:4] == ["hpc", "up", login.name, "debug"], text
        assert "unreachable" in lines["gone"], text
    finally:
        c.run_as_user(["scancel", held, running], check=False)


def test_hosts_asks_slurm_on_this_machine_for_a_cluster_without_login(sbed: Bed) -> None:
    c, _, cluster = sbed
    home = c.home
    c.write_file(f"{home}/.config/distsvc/config.toml",
                 clusters_toml({"name": "here"}), owner=c.user)
    held = c.run_as_user(["sbatch", "--parsable", "--hold", "--wrap", "true"]).stdout.strip()
    try:
        shown = c.run_as_user(["env", "DISTSVC_DAEMON=off", "distsvc", "hosts", "--json"])
        rows = json.loads(shown.stdout)["clusters"]
        assert [(r["cluster"], r["reach"], r["state"], r["pending"], r["nodes"])
                for r in rows] == [("here", "here", "up", 1, {"idle": 1})], rows
        assert rows[0]["cpus_total"] == cluster.cpus
    finally:
        c.run_as_user(["scancel", held], check=False)
