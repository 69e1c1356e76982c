"""The distsvc unit files themselves, for installations the Debian package does not make.

A pip or pipx installation has no /usr/bin/distsvc and no /usr/lib/systemd/user: `distsvc
install-units` writes the four units into a unit directory with ExecStart= naming that
installation's program. Their text comes from the package data `distsvc/units/`, which is a
symlink to the project's `systemd/` directory (the one copy; the .deb installs those files as
they are, with /usr/bin/distsvc), so a wheel carries exactly the packaged units.

Each file written starts with `MARKER`: only such files are replaced or removed, never a unit
the user or an administrator wrote. `systemctl` is run here, the one place that knows it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

UNITS = ("distsvc.socket", "distsvc.service", "distsvc-scan.service", "distsvc-scan.timer")
"""Every unit file, in the order they are written."""
ENABLE = ("distsvc.socket", "distsvc-scan.timer")
"""What a user enables: the daemon starts from its socket, the scan service from its timer."""
PACKAGED_PROGRAM = "/usr/bin/distsvc"
"""The program the unit files in systemd/ name (the .deb's)."""
MARKER = "# Written by `distsvc install-units`"
"""First line of every unit file it writes: what `--remove` and a new install may replace."""
SYSTEM_WIDE_DIR = Path("/etc/systemd/user")
"""User units for every user, the administrator's directory (systemd.unit(5))."""


def user_dir(environ: Mapping[str, str]) -> Path:
    """The user's own unit directory: $XDG_CONFIG_HOME/systemd/user (~/.config/...)."""
    config = environ.get("XDG_CONFIG_HOME") or ""
    base = Path(config) if config.startswith("/") else Path(environ.get("HOME") or "~") / ".config"
    return base.expanduser() / "systemd" / "user"


def packaged(name: str) -> str:
    """A unit file's text as this installation carries it (its package data)."""
    return (resources.files("distsvc") / "units" / name).read_text()


def exec_path(path: str) -> str:
    """`path` as the first word of an Exec line: systemd expands % specifiers and $VARIABLES
    and splits at white space even there, so each is escaped and the word quoted if needed."""
    word = path.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{word}"' if any(c.isspace() for c in word) else word


def render(text: str, program: str, documentation: str | None, source: str) -> str:
    """A packaged unit's text for an installation whose distsvc is `program`: ExecStart= runs
    it, Documentation= (if given) names its documentation, and `MARKER` comes first, with
    `source` (what wrote it)."""
    lines = [MARKER, f"# for {source}; `distsvc install-units --remove` removes it.",
             "# Made from the unit the Debian package installs as it is, with ExecStart= and",
             "# Documentation= naming this installation."]
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            command = line.removeprefix("ExecStart=")
            if not command.startswith(PACKAGED_PROGRAM + " "):
                raise ValueError(f"unexpected ExecStart= in a packaged unit: {line}")
            line = "ExecStart=" + exec_path(program) + command.removeprefix(PACKAGED_PROGRAM)
        elif line.startswith("Documentation=") and documentation is not None:
            line = "Documentation=" + documentation.replace("%", "%%")
        lines.append(line)
    return "\n".join(lines) + "\n"


def written_by_us(path: Path) -> bool:
    """Whether the file at `path` starts with `MARKER` (False when it cannot be read)."""
    try:
        with path.open("rb") as file:
            return file.readline().rstrip(b"\n") == MARKER.encode()
    except OSError:
        return False


def write(path: Path, text: str) -> None:
    """Write a unit file atomically (a new file renamed over the old), mode 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.chmod(partial, 0o644)  # whatever the umask
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


def links_to(directory: Path, targets: Sequence[Path]) -> list[Path]:
    """The enablement symlinks (directory/*.wants/, *.requires/, *.upholds/) pointing at one
    of `targets`: what `systemctl enable` made for them."""
    wanted = {os.path.normpath(t) for t in targets}
    found = []
    for sub in sorted(directory.glob("*.*")):
        if not sub.name.endswith((".wants", ".requires", ".upholds")) or not sub.is_dir():
            continue
        for link in sorted(sub.iterdir()):
            if link.is_symlink() and os.path.normpath(
                    os.path.join(sub, os.readlink(link))) in wanted:
                found.append(link)
    return found


def systemctl_user(*args: str) -> bool:
    """`systemctl --user ARGS`; whether it succeeded (False also when no user manager
    answers or systemctl is missing). Its output is not shown: callers say what happened."""
    try:
        done = subprocess.run(["systemctl", "--user", *args], capture_output=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0
