"""distsvc: run commands on the least-loaded of your SSH hosts, as if they ran locally.

Imports nothing at all: every `distsvc-run` loads this first (see actions/client.py on what
the fast client may import).
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

_identity: str | None = None


def _newest_source(directory: str) -> int:
    """The newest modification time (ns) of the .py files under `directory`."""
    newest = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.name.endswith(".py"):
                newest = max(newest, entry.stat().st_mtime_ns)
            elif entry.name != "__pycache__" and entry.is_dir(follow_symlinks=False):
                newest = max(newest, _newest_source(entry.path))
        except OSError:
            pass
    return newest


def identity() -> str:
    """This installation's version and code, as a daemon and its clients compare them.

    The version alone would not tell an editable install before and after a `git pull`:
    the newest modification time of the package's files does (one stat per source file, from
    os.scandir, once per process). A daemon that meets a client of another identity retires
    (daemon/serve.py).
    """
    global _identity
    if _identity is None:
        newest = _newest_source(os.path.dirname(os.path.abspath(__file__)))
        _identity = f"{__version__}+{newest}"
    return _identity
