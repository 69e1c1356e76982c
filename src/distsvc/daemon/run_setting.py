"""What a `run` request asks for: its configuration, environment, directory, terminal type.

Two forms (protocol.py): the full client sends them decided (the configuration as data,
validated here once per distinct configuration; the variables that travel; the working
directory); the fast client (`distsvc-run CMD ARGS`, see
actions/client.run_fast) sends its raw environment and current directory, and the daemon
decides here, exactly as the full client would: the configuration file the environment names
(XDG_CONFIG_HOME, HOME; DISTSVC_HOSTS applied), loaded once per version of the file (by
device, inode, size and times), the saved environment (`distsvc env`), the allow/deny
patterns, $PWD when it is the current directory. What it cannot do from the environment
alone (a configuration error to report with each bad field's path, no hosts configured so
the command runs on the client's machine, an unreadable saved environment) it leaves to the
full client: `FullClient`, answered before anything started.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping
from typing import Any

import distsvc.actions.run
import distsvc.config
import distsvc.environment
import distsvc.errors
import distsvc.paths
import distsvc.protocol

CACHED_CONFIGS = 32  # distinct configurations kept (of each form); more clears the cache


class FullClient(Exception):
    """The fast client's request needs the full client (the reason, for the log)."""


@dataclasses.dataclass(frozen=True)
class Setting:
    config: distsvc.config.Config
    env: dict[str, str]  # the variables set for the command
    workdir: str
    term: str
    ssh_auth_sock: str | None  # the client's ssh-agent


def _strings(mapping: dict[Any, Any], name: str) -> dict[str, str]:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise distsvc.protocol.ProtocolError(f"{name} must hold strings")
    return mapping


_configs: dict[tuple[str, str | None], tuple[distsvc.paths.Signature | None,
                                             distsvc.config.Config]] = {}
_configs_lock = threading.Lock()

# A configuration file larger than this is not read by the daemon (the full client reads it
# and says what is wrong): a client must not make the daemon read /dev/zero for it.
CONFIG_MAX_BYTES = 1 << 20


def _checked(path: str) -> distsvc.paths.Signature | None:
    """The signature of a file the daemon may read for a client (None: there is none), or
    FullClient: a relative path is the client's to resolve, a FIFO would block us, a device
    never end, a huge file fill our memory: the full client reads it, hurting only itself."""
    if not os.path.isabs(path):  # a relative HOME
        raise FullClient(f"{path} is a relative path")
    stamp = distsvc.paths.regular_file_signature(path)
    if stamp is None and os.path.lexists(path):
        raise FullClient(f"{path} is not a regular file")
    if stamp is not None and stamp[2] > CONFIG_MAX_BYTES:
        raise FullClient(f"{path} is over {CONFIG_MAX_BYTES} bytes")
    return stamp


def client_config(environ: Mapping[str, str]) -> distsvc.config.Config:
    """The configuration `distsvc-run` would load with this environment; cached while its
    file is unchanged. Raises ConfigError as config.load does."""
    path = str(distsvc.paths.config_file(environ))
    stamp = _checked(path)
    key = (path, environ.get("DISTSVC_HOSTS"))
    with _configs_lock:
        cached = _configs.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    config = distsvc.config.load(None, environ)
    with _configs_lock:
        if len(_configs) >= CACHED_CONFIGS:
            _configs.clear()
        _configs[key] = (stamp, config)
    return config


def from_environ(request: dict[str, Any]) -> Setting:
    """The fast client's form: decided here from its environment and directory."""
    environ = _strings(distsvc.protocol.field(request, "environ", dict), "environ")
    cwd = distsvc.protocol.field(request, "cwd", str)
    try:
        config = client_config(environ)
        _checked(str(distsvc.paths.saved_environment_file(environ)))
        env, workdir, term = distsvc.actions.run.command_setting(config, environ, cwd)
    except distsvc.errors.DistsvcError as error:
        raise FullClient(error.message) from None
    if not config.hosts:
        raise FullClient("no hosts configured: the command runs on the client's machine")
    return Setting(config=config, env=env, workdir=workdir, term=term,
                   ssh_auth_sock=environ.get("SSH_AUTH_SOCK"))


_wire_configs: dict[str, distsvc.config.Config] = {}
# The last mapping seen and its configuration: the accepting thread hands the same decoded
# request for the same frame (serve._decoded), recognized here before it is serialized for
# the key (a tenth of a `best` query's CPU).
_last_wire: tuple[dict[str, Any], distsvc.config.Config] | None = None


def wire_config(data: dict[str, Any]) -> distsvc.config.Config:
    """config.from_wire(data), validated once per distinct configuration (a client sends the
    same one with every command, `run --all` with one per host). Raises ConfigError."""
    global _last_wire
    last = _last_wire
    if last is not None and last[0] is data:
        return last[1]
    key = distsvc.protocol.dumps(data)
    with _configs_lock:
        cached = _wire_configs.get(key)
    if cached is None:
        cached = distsvc.config.from_wire(data)
        with _configs_lock:
            if len(_wire_configs) >= CACHED_CONFIGS:
                _wire_configs.clear()
            _wire_configs[key] = cached
    _last_wire = (data, cached)  # holds `data`, so no other mapping gets its id meanwhile
    return cached


def from_wire(request: dict[str, Any]) -> Setting:
    """The full client's form: as it decided."""
    config = wire_config(distsvc.protocol.field(request, "config", dict))
    env = _strings(distsvc.protocol.field(request, "env", dict), "env")
    agent = request.get("ssh_auth_sock")
    workdir = distsvc.protocol.field(request, "workdir", str) or "/"
    return Setting(config=config, env=env, workdir=workdir,
                   term=str(request.get("term") or "xterm"),
                   ssh_auth_sock=agent if isinstance(agent, str) else None)


def of(request: dict[str, Any]) -> Setting:
    return from_environ(request) if "environ" in request else from_wire(request)
