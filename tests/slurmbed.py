"""A real single-node Slurm cluster in a booted container, for the cluster tests.

Debian 12's slurm-wlm 22.05 with munge, and slurmdbd over MariaDB for accounting (`sacct`,
associations: accounts and QOS are checked, as on a real site), all installed on the machine by
``scripts/setup.sh --test`` and started here as the container's own system units. What makes it
run inside an nspawn container (checked on Debian 12, systemd 252, a hybrid cgroup layout):

- ``ProctrackType=proctrack/linuxproc`` and ``TaskPlugin=task/none``: the cgroup v1
  controllers are read-only in the container, so Slurm's cgroup plugins cannot work; Slurm
  then tracks a job's processes by parentage. It cannot bound a job's process count
  (``--tasks`` is refused by distsvc for such a cluster: `ENFORCES_TASKS` is false).
- An extra loopback address, 127.0.0.2, for the node and the controller: Slurm looks names up
  with AI_ADDRCONFIG, which ignores 127.0.0.1 when no other address is configured.
- The machine's munge key (made by the munge package) is the container's too.

``JobAcctGatherParams=OverMemoryKill``: without a cgroup plugin nothing else bounds a job's
memory, so the accounting's sampling (every second) kills a step beyond its request (the
job's state then OUT_OF_MEMORY). A job without ``--mem`` has DefMemPerCPU=100 (MiB) per CPU.

Two partitions: ``debug`` (the default, no time limit) and ``short`` (``MaxTime=1``, one minute,
and ``MaxMemPerNode=200``) for the "beyond the partition" refusals. One account, ``proj``, with
the test user in it; QOS ``normal`` only.

`cluster(c)` sets it up inside a booted container (about 5-10 s) and returns a `Cluster`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import container

NODE_ADDRESS = "127.0.0.2"
CLUSTER = "dtest"
ACCOUNT = "proj"
PARTITIONS = ("debug", "short")
ENFORCES_TASKS = False
MASK = tuple(u for u in container.DEFAULT_MASK if u not in container.SLURM_UNITS)
"""What to mask when booting a container for the cluster: the default minus munge, MariaDB and
Slurm's own units, which `container.DEFAULT_MASK` masks for every other test."""


@dataclasses.dataclass
class Cluster:
    node: str
    """The node's (and the controller's) name: the container's host name."""
    cpus: int
    memory_mb: int


def _slurm_conf(node: str, cpus: int, memory_mb: int) -> str:
    return f"""\
ClusterName={CLUSTER}
SlurmctldHost={node}({NODE_ADDRESS})
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmUser=slurm
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=100
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost={NODE_ADDRESS}
AccountingStorageEnforce=associations,limits,qos
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
JobAcctGatherParams=OverMemoryKill
JobCompType=jobcomp/none
EnforcePartLimits=ALL
MinJobAge=30
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=30
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldParameters=enable_configless
NodeName={node} NodeAddr={NODE_ADDRESS} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=ALL MaxTime=1 MaxMemPerNode=200 State=UP
"""


def _slurmdbd_conf(node: str) -> str:
    return f"""\
AuthType=auth/munge
DbdHost={node}
DbdAddr={NODE_ADDRESS}
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
"""


def _wait(c: container.Container, cmd: list[str], timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    while True:
        done = c.run(cmd, check=False, timeout=30)
        if done.returncode == 0:
            return str(done.stdout)
        if time.monotonic() > deadline:
            logs = c.run(["sh", "-c", "tail -n 30 /var/log/slurm/*.log; "
                          "journalctl -b --no-pager -n 50"], check=False)
            raise container.BootError(f"{what} did not come up: {done.stderr}\n{logs.stdout}")
        time.sleep(0.2)


def cluster(c: container.Container, timeout: float = 90) -> Cluster:
    """Set up and start the cluster inside `c` (booted with `MASK`); its user in the account."""
    node = c.run(["hostname", "-s"]).stdout.strip()
    cpus = int(c.run(["nproc"]).stdout.strip())
    memory_mb = 2000
    c.run(["ip", "addr", "add", f"{NODE_ADDRESS}/8", "dev", "lo"])
    c.run(["install", "-d", "-o", "slurm", "-g", "slurm", "/var/spool/slurmctld",
           "/var/spool/slurmd", "/var/log/slurm"])
    c.write_file("/etc/slurm/slurm.conf", _slurm_conf(node, cpus, memory_mb))
    c.write_file("/etc/slurm/slurmdbd.conf", _slurmdbd_conf(node))
    c.run(["chown", "slurm:slurm", "/etc/slurm/slurmdbd.conf"])
    c.run(["chmod", "600", "/etc/slurm/slurmdbd.conf"])
    c.run(["systemctl", "start", "munge.service", "mariadb.service"], timeout=60)
    c.run(["mysql", "-e",
           "CREATE DATABASE IF NOT EXISTS slurm_acct_db;"
           " CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';"
           " GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"])
    c.run(["systemctl", "start", "slurmdbd.service"], timeout=60)
    _wait(c, ["sacctmgr", "-n", "list", "cluster"], timeout, "slurmdbd")
    user = c.user
    c.run(["sacctmgr", "-i", "add", "cluster", CLUSTER], check=False)
    c.run(["sacctmgr", "-i", "add", "account", ACCOUNT, f"cluster={CLUSTER}"], check=False)
    c.run(["sacctmgr", "-i", "add", "user", user, f"account={ACCOUNT}",
           f"cluster={CLUSTER}"], check=False)
    c.run(["systemctl", "start", "slurmctld.service", "slurmd.service"], timeout=60)
    _wait(c, ["sh", "-c", f"sinfo -h -n {node} -o %T | grep -qx idle"], timeout,
          "the Slurm node")
    return Cluster(node=node, cpus=cpus, memory_mb=memory_mb)


def stop(c: container.Container) -> None:
    """Cancel every job and stop the cluster's units, so the container powers off quickly
    (slurmstepd of a running job otherwise holds its cgroup past the power-off timeout)."""
    c.run(["scancel", "--full", "-u", c.user], check=False)
    c.run(["systemctl", "stop", "slurmd.service", "slurmctld.service", "slurmdbd.service",
           "mariadb.service", "munge.service"], check=False, timeout=60)


@contextlib.contextmanager
def running(**options: Any
            ) -> Iterator[tuple[container.Container, container.SshHost, Cluster]]:
    """A booted container with its sshd (the cluster's login node, see
    `container.booted_with_sshd`, which takes `options`) and the cluster; stopped after."""
    with container.booted_with_sshd(mask=(*MASK, "ssh.service"), **options) as (c, host):
        try:
            yield c, host, cluster(c)
        finally:
            stop(c)


def cluster_fixture(**options: Any
                    ) -> Iterator[tuple[container.Container, container.SshHost, Cluster]]:
    """The body of a module-scoped pytest fixture: `running` (the same options). Fails (not
    skips: the suite allows no skipped tests) when the container cannot boot. In a test
    module::

        @pytest.fixture(scope="module")
        def bed() -> Iterator[tuple[container.Container, container.SshHost, slurmbed.Cluster]]:
            yield from slurmbed.cluster_fixture()
    """
    import pytest

    reason = container.can_boot()
    if reason:
        pytest.fail(reason)
    with running(**options) as bed:
        yield bed
