"""paramiko, imported without invoke until a `Match exec` line needs it.

paramiko.config imports invoke (and with it unittest.mock, asyncio and a YAML parser: about a
third of paramiko's import time) only to run the command of a `Match exec` line in
~/.ssh/config. Every process that connects paid for it before its first handshake: the
daemon's cold start, `distsvc scan`, an in-process `distsvc-run`. Imported first by this
package, this module imports paramiko with invoke held back and gives paramiko.config a
stand-in that imports invoke the first time a Match exec runs.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any


class _Invoke:
    """Stands for the invoke module in paramiko.config; the real one is imported on first use."""

    def __getattr__(self, name: str) -> Any:
        import invoke

        return getattr(invoke, name)


def _import_paramiko() -> None:
    if "paramiko" in sys.modules:
        return  # imported already (by a test, say): nothing to save
    held = "invoke" not in sys.modules
    if held:
        sys.modules["invoke"] = None  # type: ignore[assignment]  # makes `import invoke` fail
    try:
        import paramiko  # (first, so that -X importtime names it, not paramiko.config)
        import paramiko.config
    finally:
        if held and sys.modules.get("invoke", 0) is None:
            del sys.modules["invoke"]
    if getattr(paramiko.config, "invoke", True) is not None:
        return  # a paramiko that imports it differently: left as it is
    if importlib.util.find_spec("invoke") is not None:
        paramiko.config.invoke = _Invoke()  # type: ignore[attr-defined]
    else:  # what paramiko itself would have kept for its message
        paramiko.config.invoke_import_error = ModuleNotFoundError(
            "No module named 'invoke'", name="invoke")


_import_paramiko()
