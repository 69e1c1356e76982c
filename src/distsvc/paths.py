"""Where distsvc keeps its files, following the XDG base directory spec.

Light at import (os and stat only): the fast client finds the daemon's socket through
`runtime_dir`, which works on strings; pathlib (~5 ms with the re and enum it imports) is
loaded by the functions that return a Path.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path


Signature = tuple[int, int, int, int, int]


def regular_file_signature(path: str) -> Signature | None:
    """What tells a regular file changed, from one stat: device, inode, size, mtime and ctime
    (chmod and chown change only the ctime: a key made readable again must be read again).
    None when there is no such regular file (a FIFO or a device is never one to read)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _xdg(environ: Mapping[str, str], name: str, fallback: str) -> Path:
    from pathlib import Path

    value = environ.get(name, "")
    # The spec says relative paths are invalid and must be ignored.
    if value and os.path.isabs(value):
        return Path(value)
    return Path(environ.get("HOME") or os.path.expanduser("~")) / fallback


def _hostname() -> str:
    import socket

    return socket.gethostname()


def config_file(environ: Mapping[str, str]) -> Path:
    return _xdg(environ, "XDG_CONFIG_HOME", ".config") / "distsvc" / "config.toml"


def saved_environment_file(environ: Mapping[str, str]) -> Path:
    return _xdg(environ, "XDG_CONFIG_HOME", ".config") / "distsvc" / "environment.json"


def private_dir(path: str | os.PathLike[str]) -> bool:
    """An existing directory, not a symlink, owned by us and closed to everyone else."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
            and stat.S_IMODE(info.st_mode) & 0o077 == 0)


def runtime_dir(environ: Mapping[str, str]) -> str | None:
    """$XDG_RUNTIME_DIR/distsvc when it is usable: the runtime directory set, absolute and
    private, and its distsvc directory private or not there yet. Else None, and the daemon's
    socket goes to /tmp (adapters/unix.py), the state file to the state directory."""
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if not runtime or not os.path.isabs(runtime) or not private_dir(runtime):
        return None
    directory = os.path.join(runtime, "distsvc")
    try:
        os.lstat(directory)
    except FileNotFoundError:
        return directory
    except OSError:
        return None
    return directory if private_dir(directory) else None


def state_dir(environ: Mapping[str, str]) -> Path:
    """Directory of the host-load state file.

    The runtime directory is preferred: it is per user, per machine and per boot, which is
    exactly the lifetime of what the state holds (load readings and the local PIDs of jobs
    placed on hosts). Without a usable one, the XDG state directory is used with the
    machine's name in the path, because a home directory may be shared between machines
    over NFS.
    """
    from pathlib import Path

    runtime = runtime_dir(environ)
    if runtime is not None:
        return Path(runtime)
    return _xdg(environ, "XDG_STATE_HOME", ".local/state") / "distsvc" / _hostname()


def daemon_log(environ: Mapping[str, str]) -> Path:
    """The log of a daemon a client started (one started by systemd logs to the journal).

    In the XDG state directory, where a user looks for what a program left behind and which
    outlives a reboot (a daemon that cannot start fails on every boot); with the machine's
    name in the path because a home may be shared between machines over NFS.
    """
    return _xdg(environ, "XDG_STATE_HOME", ".local/state") / "distsvc" / _hostname() / "daemon.log"


def jobs_dir(environ: Mapping[str, str]) -> Path:
    """Where local jobs keep their records and output: `$XDG_STATE_HOME/distsvc/jobs`.

    The state directory, since records and output outlive the daemon and a reboot: they
    are the user's until removed. Unlike the daemon's log it has no machine name in the
    path, so IDs are unique per user; a home shared between machines (NFS) would therefore
    share its jobs too, and the daemon of one machine would not find the others' units.
    """
    return _xdg(environ, "XDG_STATE_HOME", ".local/state") / "distsvc" / "jobs"
