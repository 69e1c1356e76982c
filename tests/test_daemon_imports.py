"""What a daemon imports before its first job request, measured in a real daemon process.

A cold start (socket activation, the first `distsvc-run`) waits for the daemon's imports, so
they must not regrow: no asyncio (structlog is imported without it: log._import_structlog),
no parsers or modules of the other subcommands, no jobs machinery (job handlers, the
launcher, the systemd units adapter, pystemd) until a job request comes. (Not `python -X
importtime`: it misses what importlib.import_module loads, as commands/main.py loads the
subcommands.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import distsvc.actions.client
import helpers

# Never before the first job request.
JOBS = ("distsvc.daemon.job_handlers", "distsvc.daemon.launch", "distsvc.jobs.local",
        "distsvc.jobs.isolation", "distsvc.adapters.systemd.units", "pystemd")
# Never at a daemon's start: what its start-up cut out (importlib.metadata: adapters/ssh/lean.py;
# asyncio and uuid: log._import_structlog).
NEVER = ("asyncio", "importlib.metadata", "email", "uuid", "platform")
COMMANDS_USED = {"distsvc.commands", "distsvc.commands.main", "distsvc.commands.common",
                 "distsvc.commands.daemon", "distsvc.commands.parsing"}


def daemon_modules(tmp_path: Path, requests: list[dict[str, Any]]) -> set[str]:
    """The modules a fresh `distsvc daemon` has imported once it answered `requests` and
    stopped (written by an atexit hook as the process ends)."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    environ = {"HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(runtime),
               "XDG_CONFIG_HOME": str(tmp_path / "config"), "PATH": os.environ["PATH"]}
    log, out = tmp_path / "daemon.log", tmp_path / "modules.txt"
    code = ("import atexit, runpy, sys\n"
            f"atexit.register(lambda: open({str(out)!r}, 'w').write('\\n'.join(sys.modules)))\n"
            "sys.argv = ['distsvc', 'daemon']\n"
            "runpy.run_module('distsvc', run_name='__main__', alter_sys=True)\n")
    with open(log, "ab") as stderr:
        daemon = subprocess.Popen([sys.executable, "-c", code], env=environ,
                                  stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
    try:
        helpers.wait_for(lambda: "daemon ready" in log.read_text(), 60, "the daemon to start")
        for request in requests:
            distsvc.actions.client.query(request, environ)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, log.read_text()
    return set(out.read_text().split())


def test_a_daemon_imports_neither_asyncio_nor_other_commands_nor_jobs_before_a_job(
        tmp_path: Path) -> None:
    modules = daemon_modules(tmp_path, [{"type": "status"}])
    assert "distsvc.daemon.handlers" in modules  # the first request loaded them
    assert [m for m in modules if m.startswith(NEVER)] == []
    assert [m for m in modules if m.startswith(JOBS)] == []
    assert {m for m in modules if m.startswith("distsvc.commands")} == COMMANDS_USED


def test_the_first_job_request_loads_the_jobs_machinery(tmp_path: Path) -> None:
    modules = daemon_modules(tmp_path, [{"type": "job_list", "states": None}])
    assert "distsvc.daemon.job_handlers" in modules


def test_paramiko_knows_its_version_without_importlib_metadata() -> None:
    """paramiko puts its version in its SSH banner: lean.py reads it without the module."""
    code = ("import sys, importlib, distsvc.adapters.ssh, paramiko, paramiko.transport\n"
            "assert 'importlib.metadata' not in sys.modules\n"
            "assert not hasattr(importlib, 'metadata')\n"
            "from importlib import metadata\n"
            "assert type(metadata).__name__ == 'module'\n"
            "assert paramiko.__version__ == metadata.version('paramiko')\n"
            "print(paramiko.transport.Transport._CLIENT_ID)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("paramiko_")
