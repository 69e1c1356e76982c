"""distsvc: run commands on the least-loaded of your SSH hosts, as if they ran locally.

Imports nothing at all: every `distsvc-run` loads this first (see actions/client.py on what
the fast client may import).
"""

from __future__ import annotations

import os

__version__ = "0.1.0"


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
    """This installation, as a daemon and its clients compare them: the version and where it
    is. Cheap, for every client sends it with every request; a daemon also watches its own
    files (source_stamp), which tells an editable install before and after a `git pull`, or
    files replaced at the same version. A daemon that meets a client of another identity,
    or sees its files change, retires (daemon/serve.py)."""
    return f"{__version__}@{os.path.dirname(os.path.abspath(__file__))}"


def source_stamp() -> int:
    """The newest modification time (ns) of this installation's .py files: one stat per
    source file (os.scandir), ~1 ms, which is why clients do not send it."""
    return _newest_source(os.path.dirname(os.path.abspath(__file__)))
