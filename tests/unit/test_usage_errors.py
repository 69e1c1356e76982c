"""Bad usage: one line naming the program and where to read more, status 2, for every
program and subcommand (argparse alone would print the whole usage first)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("argv,start", [
    (["distsvc-run", "--workdir"], "distsvc-run: argument -w/--workdir: expected one argument"),
    (["distsvc", "bogus"], "distsvc: argument SUBCOMMAND: invalid choice: 'bogus'"),
    (["distsvc", "job"], "distsvc job: the following arguments are required: VERB"),
    (["distsvc", "job", "wait"], "distsvc job wait: the following arguments are required"),
    (["distsvc-shell", "--bogus"], "distsvc-shell: unrecognized arguments: --bogus"),
])
def test_a_usage_error_is_one_line_and_status_2(tmp_path, argv, start):
    done = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True,
                          env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(start), line
    prog = start.split(":")[0]
    assert line.endswith(f"(see {prog} --help)")


def test_a_misspelt_distsvc_daemon_is_refused_in_one_line(tmp_path):
    done = subprocess.run([str(BIN / "distsvc-run"), "true"], capture_output=True, text=True,
                          env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
                               "DISTSVC_DAEMON": "requird"}, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("distsvc: DISTSVC_DAEMON=requird: not a mode (use auto, off, "
                           "required, or unset it)\n")
