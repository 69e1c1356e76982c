"""Reaching a Slurm cluster: a POSIX shell there, on this machine or on its login node.

Everything distsvc does on a cluster is a shell script on `/bin/sh -s` (jobs/remote.py's
convention: nothing on a command line, answers on stdout), run by a `Runner`: here, a child
process with Slurm's client commands of this machine; for a cluster with a `login`, a session
on the SSH pool to the login node (warm in the daemon). `summary` is what `distsvc hosts`
shows of a cluster.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import TYPE_CHECKING

import distsvc.config
import distsvc.errors
import distsvc.slurm

if TYPE_CHECKING:
    import distsvc.adapters.ssh
    from distsvc.jobs.remote import Runner

SUMMARY_TIMEOUT = 10.0


def _local_runner(cluster: distsvc.config.Cluster) -> Runner:
    def run(script: str, timeout: float) -> tuple[int, bytes]:
        try:
            child = subprocess.Popen(["/bin/sh", "-s"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        except OSError as error:  # pragma: no cover - /bin/sh missing
            raise distsvc.errors.CannotRun(f"cluster {cluster.name}: cannot run /bin/sh: "
                                           f"{error.strerror}") from None
        try:
            out, _ = child.communicate(f"{{\n{script}\n}}\n".encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"cluster {cluster.name}: no answer within {timeout:g} s "
                               "from Slurm's commands here") from None
        finally:  # the script's children too (srun --test-only waiting on a controller)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        return child.returncode, out
    return run


def runner(cluster: distsvc.config.Cluster, config: distsvc.config.Config,
           pool: distsvc.adapters.ssh.Pool | None) -> Runner:
    """Runs a script on `cluster`'s shell: here, or on its login node through `pool`.

    The SSH runner raises HostUnreachable (naming the login node) when no session could be
    had; both raise TimeoutError past the timeout."""
    if cluster.login is None:
        return _local_runner(cluster)
    assert pool is not None, "a cluster with a login node needs the SSH pool"
    sessions = pool.sessions(cluster.login, config.host_key_policy, config.connect_timeout)

    def run(script: str, timeout: float) -> tuple[int, bytes]:
        # One brace group: a script cut short on the way runs nothing (see Book.runner).
        return sessions.run("exec /bin/sh -s", f"{{\n{script}\n}}\n".encode(), timeout)
    return run


def summary(cluster: distsvc.config.Cluster, run: Runner) -> distsvc.slurm.Summary:
    """What Slurm says of the cluster now (sinfo, squeue), or CannotRun with why."""
    code, out = run(distsvc.slurm.summary_script() + " 2>&1", SUMMARY_TIMEOUT)
    text = out.decode("utf-8", "replace")
    if code != 0:
        last = (text.strip().splitlines() or [f"exit status {code}"])[-1]
        if code == 127:
            last = "Slurm's commands (sinfo, squeue) are not installed there"
        raise distsvc.errors.CannotRun(f"cluster {cluster.name}: {last}")
    return distsvc.slurm.parse_summary(text)
