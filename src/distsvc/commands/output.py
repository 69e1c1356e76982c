"""What `--json` prints, for every command: one JSON object on stdout, in one envelope.

Every document starts with "version" (VERSION, the schema's version) and "command" (the
command's words as typed: "hosts", "job status", "run --all"), then the command's own fields;
docs/json.md gives each command's fields. A top-level object, never a bare list, so that the
version always has a place.

The version is that of all the schemas together, so a script checks one number. Adding a
field keeps it (readers ignore fields they do not know); removing or renaming a field, or
changing its type or meaning, makes it VERSION + 1.

A failure is not a document: with --json as without, it is one line on stderr and the exit
status (commands/common.guarded), and stdout stays empty. A usage error is found by argparse
before it knows --json was given, so an error document could not be promised for it; an
empty stdout is one rule for every failure, and a script that reads stdout fails on it
instead of taking an error object for data. What is partly failed but still an answer (a
host that could not run `run --all`'s command, a host `purge` could not reach, `status` with
no daemon running) is a document with the failure in its fields, and the exit status as
without --json.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

VERSION = 1
HELP = ("machine-readable output (schemas: /usr/share/doc/distsvc/json.md, docs/json.md in "
        "the source)")  # every --json option's


def document(command: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The envelope around `data` (whose own "version" or "command" would be a mistake)."""
    assert "version" not in data and "command" not in data, sorted(data)
    return {"version": VERSION, "command": command, **data}


def emit(command: str, data: Mapping[str, Any]) -> None:
    """Print the document for `command` on stdout."""
    sys.stdout.write(json.dumps(document(command, data), indent=1) + "\n")
