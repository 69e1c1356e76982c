"""The argument parser every distsvc program uses: argparse's, with a usage error said in one
line that names the program and where to read more, and exit status 2.

Kept out of commands/common.py: argparse is not imported on distsvc-run's fast path.
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors are one line (`PROG: MESSAGE (see PROG --help)`)
    instead of the whole usage first; subcommands' parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")
