"""paramiko, imported without invoke until a `Match exec` line needs it.

paramiko.config imports invoke (and with it unittest.mock, asyncio and a YAML parser: about a
third of paramiko's import time) only to run the command of a `Match exec` line in
~/.ssh/config. Every process that connects paid for it before its first handshake: the
daemon's cold start, `distsvc scan`, an in-process `distsvc-run`. Imported first by this
package, this module imports paramiko with invoke held back and gives paramiko.config a
stand-in that imports invoke the first time a Match exec runs.

paramiko also imports importlib.metadata (email, zipfile, csv: ~18 ms of CPU) only to read its
own version; while it imports, `from importlib import metadata` gets _Metadata, which reads
the version from the name of paramiko's .dist-info/.egg-info directory (or asks the real
module, imported then, for anything else).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any


class _Invoke:
    """Stands for the invoke module in paramiko.config; the real one is imported on first use."""

    def __getattr__(self, name: str) -> Any:
        import invoke

        return getattr(invoke, name)


class _Metadata:
    """Stands for importlib.metadata while paramiko imports (paramiko asks it its version)."""

    @staticmethod
    def version(name: str) -> str:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            site = os.path.dirname(os.path.dirname(spec.origin))
            found = [entry.removesuffix(suffix).split("-")[1]
                     for entry in os.listdir(site) if entry.startswith(f"{name}-")
                     for suffix in (".dist-info", ".egg-info") if entry.endswith(suffix)]
            if len(found) == 1:
                return found[0]
        return str(importlib.import_module("importlib.metadata").version(name))

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module("importlib.metadata"), name)


def _import_paramiko() -> None:
    if "paramiko" in sys.modules:
        return  # imported already (by a test, say): nothing to save
    held = "invoke" not in sys.modules
    if held:
        sys.modules["invoke"] = None  # type: ignore[assignment]  # makes `import invoke` fail
    stand_in = None if "importlib.metadata" in sys.modules else _Metadata()
    if stand_in is not None:
        importlib.metadata = stand_in  # type: ignore[assignment]  # what `from importlib import metadata` finds
    try:
        import paramiko  # (first, so that -X importtime names it, not paramiko.config)
        import paramiko.config
    finally:
        if held and sys.modules.get("invoke", 0) is None:
            del sys.modules["invoke"]
        if stand_in is not None and getattr(importlib, "metadata", None) is stand_in:
            del importlib.metadata
    if getattr(paramiko.config, "invoke", True) is not None:
        return  # a paramiko that imports it differently: left as it is
    if importlib.util.find_spec("invoke") is not None:
        paramiko.config.invoke = _Invoke()  # type: ignore[attr-defined]
    else:  # what paramiko itself would have kept for its message
        paramiko.config.invoke_import_error = ModuleNotFoundError(
            "No module named 'invoke'", name="invoke")


_import_paramiko()
