"""distsvc: run commands on the least-loaded of your SSH hosts, as if they ran locally."""

from __future__ import annotations

import functools

__version__ = "0.1.0"


@functools.cache
def identity() -> str:
    """This installation's version and code, as a daemon and its clients compare them.

    The version alone would not tell an editable install before and after a `git pull`:
    the newest modification time of the package's files does (~50 stat calls, once per
    process). A daemon that meets a client of another identity retires (daemon/serve.py).
    """
    import os

    newest = 0
    for directory, _dirs, files in os.walk(os.path.dirname(os.path.abspath(__file__))):
        for name in files:
            if name.endswith(".py"):
                try:
                    newest = max(newest, os.stat(os.path.join(directory, name)).st_mtime_ns)
                except OSError:
                    pass
    return f"{__version__}+{newest}"
