"""The `--json` schemas, read from docs/json.md itself, and a checker of documents against
them: the doc's field tables are the one place the schemas are written, so the doc and the
tests cannot disagree (jsonschema is not a dependency; this is all the checking we need).

A section is a heading "## `distsvc WORDS --json`" (WORDS: the document's "command") or
"## Job record", with a table `| field | type | meaning |`. A field is a path: `hosts` at the
top, `hosts[].host` in each element of the array `hosts`, `hosts{}.state` in each value of the
object (map) `hosts`. Types: string, integer, number, boolean, object, `array of T`,
`object of T` (a map with any keys, values T), `job` (the Job record section); any of them
`or null`. An object whose fields are in the table must have exactly those fields; one
whose fields are not is not looked into.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "json.md"
ENVELOPE = {"version": "integer", "command": "string"}
JOB = "Job record"
_HEADING = re.compile(r"^## (?:`distsvc (.+) --json`|(Job record))\s*$")
_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*([^|]+?)\s*\|")


def sections(text: str | None = None) -> dict[str, dict[str, str]]:
    """Section name (a command's words, or JOB) -> {field path: type}."""
    found: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in (DOC.read_text() if text is None else text).splitlines():
        heading = _HEADING.match(line)
        if heading:
            current = found.setdefault(heading.group(1) or heading.group(2), {})
        elif line.startswith("## "):
            current = None
        elif current is not None and (row := _ROW.match(line)):
            current[row.group(1)] = row.group(2)
    return found


def examples(text: str | None = None) -> dict[str, list[Any]]:
    """Section name -> the JSON examples (```json blocks) under it."""
    found: dict[str, list[Any]] = {}
    name = None
    block: list[str] | None = None
    for line in (DOC.read_text() if text is None else text).splitlines():
        heading = _HEADING.match(line)
        if heading:
            name = heading.group(1) or heading.group(2)
        elif line.startswith("## "):
            name = None
        elif line.strip() == "```json" and name is not None:
            block = []
        elif line.strip() == "```" and block is not None:
            found.setdefault(str(name), []).append(json.loads("\n".join(block)))
            block = None
        elif block is not None:
            block.append(line)
    return found


def problems(document: Any, command: str, schemas: dict[str, dict[str, str]] | None = None
             ) -> list[str]:
    """What in `document` does not fit the schema of `command` (empty: it fits)."""
    schemas = sections() if schemas is None else schemas
    if command not in schemas:
        return [f"no section for {command!r} in {DOC.name}"]
    found: list[str] = []
    if isinstance(document, dict) and document.get("command") != command:
        found.append(f"command: {document.get('command')!r}, not {command!r}")
    _check(document, "", "object", {**ENVELOPE, **schemas[command]}, schemas, found)
    return found


def _children(fields: dict[str, str], path: str) -> set[str]:
    prefix = f"{path}." if path else ""
    return {p[len(prefix):] for p in fields
            if p.startswith(prefix) and re.fullmatch(r"[^.\[\]{}]+", p[len(prefix):])}


def _check(value: Any, path: str, kind: str, fields: dict[str, str],
           schemas: dict[str, dict[str, str]], found: list[str]) -> None:
    where = path or "(top)"
    if kind.endswith(" or null"):
        if value is None:
            return
        kind = kind.removesuffix(" or null")
    if kind.startswith("array of "):
        if not isinstance(value, list):
            found.append(f"{where}: {type(value).__name__}, not an array")
            return
        for item in value:
            _check(item, f"{path}[]", kind.removeprefix("array of "), fields, schemas, found)
    elif kind.startswith("object of "):
        if not isinstance(value, dict):
            found.append(f"{where}: {type(value).__name__}, not an object")
            return
        for item in value.values():
            _check(item, f"{path}{{}}", kind.removeprefix("object of "), fields, schemas,
                   found)
    elif kind == "job":
        _check(value, "", "object", schemas[JOB], schemas, found)
    elif kind == "object":
        if not isinstance(value, dict):
            found.append(f"{where}: {type(value).__name__}, not an object")
            return
        names = _children(fields, path)
        if not names:
            return  # not documented field by field
        prefix = f"{path}." if path else ""
        for missing in sorted(names - set(value)):
            found.append(f"{prefix}{missing}: missing")
        for extra in sorted(set(value) - names):
            found.append(f"{prefix}{extra}: not documented")
        for name in sorted(names & set(value)):
            _check(value[name], prefix + name, fields[prefix + name], fields, schemas, found)
    elif not _scalar(value, kind):
        found.append(f"{where}: {json.dumps(value)[:60]} is not {kind}")


def _scalar(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    raise AssertionError(f"unknown type {kind!r} in {DOC.name}")
