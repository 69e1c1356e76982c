"""docs/json.md against the commands: every command with --json has a section there and
every section a command; its examples fit its schema; the checker catches what it must."""

from __future__ import annotations

import argparse
import json

import distsvc.commands.main
import distsvc.commands.output
import jsondoc


def json_commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> set[str]:
    """The words of every (sub)command whose parser takes --json."""
    found = set()
    if "--json" in parser._option_string_actions:
        found.add("run --all" if words == ("run",) else " ".join(words))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= json_commands(sub, (*words, name))
    return found


REFUSED = {"job logs"}  # takes --json only to refuse it with the reason (docs/json.md)


def test_every_command_with_json_has_a_section_and_every_section_a_command() -> None:
    documented = set(jsondoc.sections()) - {jsondoc.JOB}
    assert json_commands(distsvc.commands.main.parser()) - REFUSED == documented


def test_the_examples_fit_their_schemas() -> None:
    examples = jsondoc.examples()
    assert set(examples) == set(jsondoc.sections()) - {jsondoc.JOB}, "an example each"
    for command, documents in examples.items():
        for document in documents:
            assert jsondoc.problems(document, command) == [], command


def test_the_checker_catches_a_missing_an_extra_and_a_mistyped_field() -> None:
    good = distsvc.commands.output.document("best", {"host": "h1"})
    assert jsondoc.problems(good, "best") == []
    assert jsondoc.problems({**good, "host": 3}, "best") == ["host: 3 is not string"]
    assert jsondoc.problems({**good, "more": 1}, "best") == ["more: not documented"]
    assert jsondoc.problems({"version": 1, "command": "best"}, "best") == ["host: missing"]
    rows = distsvc.commands.output.document("hosts", {"hosts": [{"host": "h1"}]})
    assert "hosts[].state: missing" in jsondoc.problems(rows, "hosts")


def test_the_envelope_comes_first() -> None:
    text = json.dumps(distsvc.commands.output.document("job clean", {"removed": []}))
    assert text == '{"version": 1, "command": "job clean", "removed": []}'
