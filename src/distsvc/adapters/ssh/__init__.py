"""The SSH adapter: the one place distsvc talks SSH (through paramiko).

Honours ~/.ssh/config (HostName, Port, User, IdentityFile, ProxyCommand, ProxyJump with any
number of hops, UserKnownHostsFile, StrictHostKeyChecking=accept-new), the ssh-agent and
known_hosts. Host keys are always verified, of jump hosts too: an unknown key is refused
unless the policy is "accept-new"; a changed key is always refused.

Every failure to connect is an errors.HostUnreachable (HostKeyRefused for a host key) whose
reason is one line saying what happened and what to do; paramiko's own messages and log
records never reach the user (`handshake._explain` is the translation table).

Three modules, imported one way: `channels` (a connection and the sessions on it) <-
`handshake` (connecting) <- `pool` (connections kept by host). The rest of distsvc uses what
this package exports. paramiko is imported by this package only, and this package only by
code that needs SSH, so commands that do not connect anywhere do not pay its import time.
"""

import distsvc.adapters.ssh.lean  # noqa: F401  (first: paramiko without invoke)
from distsvc.adapters.ssh.channels import (
    KEEPALIVE_TIMEOUT,
    SESSIONS_PER_CONNECTION,
    Connection,
    RemoteProcess,
    run_to_end,
)
from distsvc.adapters.ssh.handshake import Target, agent_usable, connect, resolve
from distsvc.adapters.ssh.pool import Pool, Sessions

__all__ = ["KEEPALIVE_TIMEOUT", "SESSIONS_PER_CONNECTION", "Connection", "Pool",
           "RemoteProcess", "Sessions", "Target", "agent_usable", "connect", "resolve",
           "run_to_end"]
