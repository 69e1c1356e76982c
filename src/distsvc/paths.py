"""Where distsvc keeps its files, following the XDG base directory spec."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path


def _xdg(environ: Mapping[str, str], name: str, fallback: str) -> Path:
    value = environ.get(name, "")
    # The spec says relative paths are invalid and must be ignored.
    if value and os.path.isabs(value):
        return Path(value)
    return Path(environ.get("HOME") or os.path.expanduser("~")) / fallback


def config_file(environ: Mapping[str, str]) -> Path:
    return _xdg(environ, "XDG_CONFIG_HOME", ".config") / "distsvc" / "config.toml"


def saved_environment_file(environ: Mapping[str, str]) -> Path:
    return _xdg(environ, "XDG_CONFIG_HOME", ".config") / "distsvc" / "environment.json"


def state_dir(environ: Mapping[str, str]) -> Path:
    """Directory of the host-load state file.

    The runtime directory is preferred: it is per user, per machine and per boot, which is
    exactly the lifetime of what the state holds (load readings and the local PIDs of jobs
    placed on hosts). Without it, the XDG state directory is used with the machine's name in
    the path, because a home directory may be shared between machines over NFS.
    """
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "distsvc"
    return _xdg(environ, "XDG_STATE_HOME", ".local/state") / "distsvc" / socket.gethostname()
