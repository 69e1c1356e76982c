"""The project's own promises: README set-up commands, CI entry point, example config."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import distsvc.config

ROOT = Path(__file__).resolve().parents[1]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)```", setup, re.S)
    assert [c.strip() for c in commands] == [
        "scripts/setup.sh && .venv/bin/distsvc-run uname -a", "scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and "test-command" in ci


def test_example_config_is_valid() -> None:
    config = distsvc.config.load(ROOT / "config" / "example.toml", {})
    assert [h.name for h in config.hosts] == ["build1", "build2", "gpu1"]


def test_client_does_not_import_paramiko_without_hosts(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    code = ("import sys, distsvc.commands.run as r; "
            "r.main(['-q', 'true']) ; print('paramiko' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "False", out.stderr


def test_logging_leaves_asyncio_and_uuid_out_until_something_uses_them(
        tmp_path: Path) -> None:
    """structlog imports asyncio (and with it ssl and libssl) only for async logging methods
    and uuid (and platform) only for its deprecated threadlocal module, both of which distsvc
    never calls: the daemon and every command that logs do without them."""
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    code = ("import sys, distsvc.log as log; log.configure('info'); log.get().debug('x'); "
            "print(*(m in sys.modules for m in ('asyncio', 'ssl', 'uuid', 'platform'))); "
            "import structlog._native as n; n.asyncio.get_running_loop; "
            "import structlog.threadlocal as t; t.uuid.uuid4(); "
            "print('asyncio' in sys.modules, 'uuid' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split() == ["False"] * 4 + ["True"] * 2, out.stderr


def test_fast_launcher_writes_a_script_without_site_or_keeps_pips(tmp_path: Path) -> None:
    """scripts/fast-launcher.sh: `#!PYTHON -S` with distsvc's directory on sys.path, which
    runs the full client as well (it loads site itself); pip's script is kept where the
    interpreter's path cannot be a shebang (a space in it)."""
    launcher = ROOT / "scripts" / "fast-launcher.sh"
    script = tmp_path / "distsvc-run"
    script.write_text("pip's script\n")
    subprocess.run([str(launcher), sys.executable, str(script)], check=True)
    text = script.read_text()
    assert text.splitlines()[0] == f"#!{sys.executable} -S"
    assert f"sys.path.append({str(ROOT / 'src')!r})" in text
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"]})
    assert (done.returncode, done.stdout) == (0, f"distsvc {distsvc.__version__}\n")
    # With the package's directory given, as the Debian package's rules give it.
    subprocess.run([str(launcher), sys.executable, str(script), "/usr/lib/python3/dist-packages"],
                   check=True)
    assert "sys.path.append('/usr/lib/python3/dist-packages')" in script.read_text()
    spaced = tmp_path / "a venv" / "python"
    spaced.parent.mkdir()
    spaced.symlink_to(sys.executable)
    script.write_text("pip's script\n")
    kept = subprocess.run([str(launcher), str(spaced), str(script), str(ROOT / "src")],
                          capture_output=True, text=True)
    assert kept.returncode == 0 and "keeping pip's" in kept.stderr
    assert script.read_text() == "pip's script\n"
