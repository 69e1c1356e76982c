"""The man pages and completion scripts in share/ are scripts/gen-docs.py's output for the
parsers as they are now, render without a warning, say what a man page must, and a wheel
installs them where man and bash-completion look."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import distsvc.commands.main
import distsvc.commands.run
import distsvc.commands.shell

ROOT = Path(__file__).resolve().parent.parent
SHARE = ROOT / "share"
PAGES = {"distsvc": SHARE / "man/man1/distsvc.1",
         "distsvc-run": SHARE / "man/man1/distsvc-run.1",
         "distsvc-shell": SHARE / "man/man1/distsvc-shell.1"}
SECTIONS = ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "ENVIRONMENT", "FILES",
            "SEE ALSO")


def files(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def test_share_is_what_gen_docs_makes_from_the_parsers(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts/gen-docs.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    made, committed = files(tmp_path), files(SHARE)
    stale = sorted(name for name in made.keys() | committed.keys()
                   if made.get(name) != committed.get(name))
    assert not stale, (f"share/ is out of date ({', '.join(stale)}): "
                       "run .venv/bin/python scripts/gen-docs.py")


def render(page: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat",
                               "LC_ALL": "C.UTF-8"})


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_without_warnings(name: str) -> None:
    groff = subprocess.run(["groff", "-ww", "-z", "-man", str(PAGES[name])],
                           capture_output=True, text=True, timeout=60)
    assert (groff.returncode, groff.stderr) == (0, "")
    man = render(PAGES[name])
    assert (man.returncode, man.stderr) == (0, "")
    headings = [line for line in man.stdout.splitlines() if re.fullmatch(r"[A-Z][A-Z ]+", line)]
    for section in SECTIONS:
        assert section in headings, (name, section, headings)
    assert f"{name} - " in " ".join(man.stdout.split())  # NAME: name - summary


def subcommands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
                ) -> list[tuple[str, ...]]:
    """Every documented (sub)command's words: ("job", "start"), ..."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._get_subactions():
                found.append((*words, choice.dest))
                found += subcommands(action.choices[choice.dest], (*words, choice.dest))
    return found


def test_distsvc_page_has_every_subcommand_and_verb_with_its_options() -> None:
    text = " ".join(render(PAGES["distsvc"]).stdout.split())
    parser = distsvc.commands.main.parser()
    found = subcommands(parser)
    assert ("job", "wait") in found and ("complete",) not in found
    for words in found:
        assert f"COMMAND 'distsvc {' '.join(words)}'" in text, words
    assert "distsvc complete" not in text  # hidden
    for option in ("--memory", "--after", "--retry-delay", "--follow", "--grace", "--any"):
        assert option in text


@pytest.mark.parametrize("name, parser", [
    ("distsvc-run", distsvc.commands.run.parser), ("distsvc-shell", distsvc.commands.shell.parser)])
def test_page_has_every_option(name: str, parser: type[argparse.ArgumentParser]) -> None:
    text = render(PAGES[name]).stdout
    for action in parser()._actions:
        for option in action.option_strings:
            if option not in ("-h", "--help"):
                assert option in text, (name, option)


def test_environment_sections_name_every_variable_the_code_reads() -> None:
    """DISTSVC_* read anywhere in src (os.environ / environ.get), but the tests' own."""
    read = set()
    for path in (ROOT / "src/distsvc").rglob("*.py"):
        read |= set(re.findall(r"environ(?:\.get\(|\[)\"(DISTSVC_[A-Z_]+)\"", path.read_text()))
    read -= {"DISTSVC_TMP_BASE"}  # tests point the socket's fallback directory elsewhere
    assert {"DISTSVC_HOSTS", "DISTSVC_DAEMON", "DISTSVC_LOG"} <= read
    for page in PAGES.values():
        text = render(page).stdout
        environment = text[text.index("\nENVIRONMENT\n"):text.index("\nFILES\n")]
        for name in read:
            assert name in environment, (page.name, name)


@pytest.mark.timeout(600)
def test_a_wheel_installs_pages_and_completions_where_man_and_bash_look(
        tmp_path: Path) -> None:
    """pip's wheel carries share/ as data files under the prefix: `man distsvc-run` finds a
    venv's page through PATH (bin -> ../share/man); bash-completion 2.11 finds the venv's
    script only through XDG_DATA_DIRS (it does not look next to the command: 2.12 does)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path / "wheel"), str(ROOT)], check=True, timeout=500,
                   capture_output=True, stdin=subprocess.DEVNULL)
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=120)
    [wheel] = (tmp_path / "wheel").glob("distsvc-*.whl")
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps",
                    "--disable-pip-version-check", str(wheel)], check=True, timeout=300,
                   capture_output=True, stdin=subprocess.DEVNULL)
    for name, page in PAGES.items():
        installed = venv / "share/man/man1" / page.name
        assert installed.read_bytes() == page.read_bytes()
        for script in (venv / "share/bash-completion/completions" / name,
                       venv / "share/zsh/vendor-completions" / f"_{name}"):
            assert script.is_file(), script
    env = {k: v for k, v in os.environ.items() if k not in ("MANPATH",)}
    env.update(PATH=f"{venv}/bin:/usr/bin:/bin", HOME=str(tmp_path), LC_ALL="C.UTF-8")
    found = subprocess.run(["man", "-w", "distsvc-run"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert found.stdout.strip() == str(venv / "share/man/man1/distsvc-run.1"), found.stderr
    loader = ("source /usr/share/bash-completion/bash_completion; "
              "__load_completion distsvc-run; complete -p distsvc-run")
    bare = subprocess.run(["bash", "--norc", "-c", loader], env=env, capture_output=True,
                          text=True, timeout=60)
    assert bare.returncode != 0  # 2.11: not found by the command's place alone
    env["XDG_DATA_DIRS"] = f"{venv}/share:/usr/local/share:/usr/share"
    found_there = subprocess.run(["bash", "--norc", "-c", loader], env=env,
                                 capture_output=True, text=True, timeout=60)
    assert "_shtab_distsvc_run distsvc-run" in found_there.stdout, found_there.stderr
