"""Finding and ending this user's stray processes on every host (distssh's purge)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import re
from collections.abc import Sequence

import distsvc.adapters.ssh
import distsvc.config
import distsvc.errors

# Never listed: the user's own login sessions and service manager.
ALWAYS_KEPT = (r"^sshd[:\-]", r"^(/\S*/)?systemd --user", r"^\(sd-pam\)")

# Every process of the user outside this listing's own ssh session.
_LIST = (
    's=$(ps -o sid= -p $$ | tr -d " "); '
    'ps -u "$(id -u)" -ww -o pid= -o sid= -o args= | '
    'awk -v s="$s" \'$2 != s { $2 = ""; print }\''
)
KILL_GRACE = 2


@dataclasses.dataclass
class Stray:
    host: str
    pid: int
    command: str


@dataclasses.dataclass
class HostResult:
    host: str
    strays: list[Stray]
    error: str | None = None


def _parse(host: str, output: str, keep: Sequence[re.Pattern[str]]) -> list[Stray]:
    strays = []
    for line in output.splitlines():
        pid, _, command = line.strip().partition(" ")
        command = command.strip()
        if pid.isdigit() and not any(p.search(command) for p in keep):
            strays.append(Stray(host, int(pid), command))
    return strays


def _on_host(host: distsvc.config.Host, config: distsvc.config.Config,
             keep: Sequence[re.Pattern[str]], kill: bool) -> HostResult:
    try:
        connection = distsvc.adapters.ssh.connect(
            distsvc.adapters.ssh.resolve(host, config.host_key_policy), config.connect_timeout)
    except distsvc.errors.HostUnreachable as error:
        return HostResult(host.name, [], error.reason)
    try:
        _, output = connection.run(_LIST, timeout=config.connect_timeout * 2)
        strays = _parse(host.name, output.decode("utf-8", "replace"), keep)
        if kill and strays:
            pids = " ".join(str(s.pid) for s in strays)
            connection.run(
                f"kill -TERM {pids} 2>/dev/null; sleep {KILL_GRACE}; kill -KILL {pids} 2>/dev/null;"
                " exit 0", timeout=KILL_GRACE + config.connect_timeout * 2)
        return HostResult(host.name, strays)
    except (TimeoutError, OSError) as error:
        return HostResult(host.name, [], str(error) or type(error).__name__)
    finally:
        connection.close()


def purge(config: distsvc.config.Config, whitelist: Sequence[str], kill: bool
          ) -> list[HostResult]:
    """List (and with `kill`, end) the user's processes on every host, but whitelisted ones."""
    try:
        keep = [re.compile(p) for p in (*ALWAYS_KEPT, *whitelist)]
    except re.error as error:
        raise distsvc.errors.UsageError(f"--whitelist: bad regular expression: {error}") from None
    with concurrent.futures.ThreadPoolExecutor(max(1, len(config.hosts))) as pool:
        return list(pool.map(lambda h: _on_host(h, config, keep, kill), config.hosts))

