"""`distsvc install-units [--user | --system-wide] [--remove] [--force] [--dry-run]`.

The Debian package puts the units in /usr/lib/systemd/user with /usr/bin/distsvc; a pip or
pipx installation has neither, so this writes them for it: with ExecStart= naming this
installation's `distsvc` (the program being run, else the one beside this interpreter, else
the one on PATH) and Documentation= its package's metadata (the README is its long
description). `--user` (the default) is the user's own directory, ~/.config/systemd/user;
`--system-wide`, for root, is /etc/systemd/user, which every user's manager reads (the
installation must then be readable by all). It does not enable anything, as the .deb does
not: it says what is left to do, after reloading the user manager itself when one answers.
`--remove` stops and disables what it wrote and removes it, leaving other files alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

import distsvc
import distsvc.adapters.systemd.unitfiles as unitfiles
import distsvc.errors


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name, help="write the systemd user units for this (pip or pipx) installation",
        description="Write distsvc.socket, distsvc.service, distsvc-scan.service and "
        "distsvc-scan.timer with ExecStart= naming this installation's distsvc, reload the "
        "user manager if one answers, and say what is left to do. Not needed with the Debian "
        "package, which installs them itself.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", dest="system_wide", action="store_false", default=False,
                       help="for you: ~/.config/systemd/user (the default)")
    where.add_argument("--system-wide", action="store_true",
                       help=f"for every user: {unitfiles.SYSTEM_WIDE_DIR} (as root)")
    p.add_argument("--remove", action="store_true",
                   help="stop, disable and remove the units this command wrote")
    p.add_argument("--force", action="store_true",
                   help="replace unit files it did not write")
    p.add_argument("--dry-run", action="store_true",
                   help="print the units it would write, change nothing")


def this_program(argv0: str) -> str:
    """This installation's `distsvc`: the program running (a console script's argv[0] is its
    path), else the one in this interpreter's scripts directory (a venv's bin), else on PATH."""
    candidates = [os.path.abspath(argv0)] if Path(argv0).name == "distsvc" else []
    candidates.append(os.path.join(sysconfig.get_path("scripts"), "distsvc"))
    candidates.append(shutil.which("distsvc") or "")
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise distsvc.errors.DistsvcError(
        "cannot find this installation's distsvc program (not the program running, not in "
        f"{sysconfig.get_path('scripts')}, not on PATH): run install-units as that program")


def documentation() -> str | None:
    """A file:// URL of this installation's package metadata, whose description is the
    README (a wheel has no README file of its own), or None."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("distsvc")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name == "METADATA" and file.parent.name.endswith(".dist-info"):
            path = Path(str(dist.locate_file(file))).resolve()
            if path.is_file():
                return path.as_uri()
    return None


def run(args: argparse.Namespace) -> int:
    directory = (unitfiles.SYSTEM_WIDE_DIR if args.system_wide
                 else unitfiles.user_dir(os.environ))
    try:
        if args.remove:
            return remove(directory, args)
        return install(directory, args)
    except OSError as error:
        hint = " (--system-wide needs root)" if args.system_wide and os.geteuid() else ""
        where = error.filename or directory
        raise distsvc.errors.DistsvcError(
            f"cannot change {where}: {error.strerror or error}{hint}") from None


def install(directory: Path, args: argparse.Namespace) -> int:
    program = this_program(sys.argv[0])
    source = f"distsvc {distsvc.__version__} at {program}"
    texts = {name: unitfiles.render(unitfiles.packaged(name), program, documentation(), source)
             for name in unitfiles.UNITS}
    if args.dry_run:
        for name, text in texts.items():
            print(f"# {directory / name}\n{text}")
        return 0
    foreign = [directory / name for name in unitfiles.UNITS
               if (directory / name).exists() and not unitfiles.written_by_us(directory / name)]
    if foreign and not args.force:
        raise distsvc.errors.UsageError(
            f"{foreign[0]} exists and was not written by distsvc install-units: left as it is "
            "(--force replaces it)")
    for name, text in texts.items():
        unitfiles.write(directory / name, text)
    print(f"wrote {', '.join(unitfiles.UNITS)} in {directory}, running {program}")
    packaged = [n for n in unitfiles.UNITS if Path("/usr/lib/systemd/user", n).exists()]
    if packaged:
        print("  they take the place of the ones in /usr/lib/systemd/user (from a package)")
    enable = f"systemctl --user enable --now {' '.join(unitfiles.ENABLE)}"
    if args.system_wide:
        print("each user, to use them: systemctl --user daemon-reload && " + enable)
        print(f"  or for everyone: systemctl --global enable {' '.join(unitfiles.ENABLE)}")
    elif unitfiles.systemctl_user("daemon-reload"):
        print("reloaded your user manager (systemctl --user daemon-reload); to start the "
              f"daemon on demand and the scan timer: {enable}")
    else:
        print(f"no user manager answered; once one does: systemctl --user daemon-reload && "
              f"{enable}")
    return 0


def remove(directory: Path, args: argparse.Namespace) -> int:
    ours = [directory / n for n in unitfiles.UNITS if unitfiles.written_by_us(directory / n)]
    others = [directory / n for n in unitfiles.UNITS
              if (directory / n).exists() and directory / n not in ours]
    links = unitfiles.links_to(directory, ours)
    if args.dry_run:
        for path in [*links, *ours]:
            print(f"would remove {path}")
        return 0
    manager = False
    if ours and not args.system_wide:
        # Stopped and disabled by the manager: its links go and nothing runs a removed unit.
        names = [path.name for path in ours]
        manager = unitfiles.systemctl_user("disable", "--now", *names)
        unitfiles.systemctl_user("reset-failed", *names)
    for path in [*unitfiles.links_to(directory, ours), *ours]:  # what disable did not remove
        path.unlink(missing_ok=True)
    if manager:
        unitfiles.systemctl_user("daemon-reload")
    if ours:
        print(f"removed {', '.join(p.name for p in ours)} from {directory}"
              + (f" and {len(links)} enablement link{'s' * (len(links) != 1)}" if links else "")
              + ("; stopped and disabled them first" if manager else ""))
    else:
        print(f"nothing to remove: no unit in {directory} was written by distsvc install-units")
    for path in others:
        print(f"  left {path}: not written by distsvc install-units")
    if args.system_wide and ours:
        print("  each user's manager still runs them until: systemctl --user daemon-reload")
    return 0
