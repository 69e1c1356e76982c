#!/usr/bin/env python3
"""Regenerates share/: the man pages and the bash and zsh completion scripts of distsvc,
distsvc-run and distsvc-shell, from the parsers their --help prints (commands/main.py,
run.py and shell.py `parser()`), so the three never disagree.

    .venv/bin/python scripts/gen-docs.py [DIR]     (DIR: default share/ next to this script)

Generators, pinned in pyproject.toml's `test` extra (tests/test_docs_gen.py regenerates into
a temporary directory and compares, so a parser changed without this run fails there):
- argparse-manpage for the pages: every subcommand and `job` verb with its options, from the
  parser; the sections a parser does not know (EXIT STATUS, ENVIRONMENT, FILES, SEE ALSO) are
  written below in help2man's include format, which it reads.
- shtab for completion: static scripts, so a Tab on a subcommand or an option starts no
  Python (argcomplete runs the program on every Tab, ~100 ms here, and needs a global hook
  or a marker in the script). Host names and job IDs are dynamic: for those the scripts run
  `distsvc complete hosts|jobs` (commands/complete.py: reads the config or the job store's
  directory only).

The committed files are what pip (pyproject.toml data-files) and the .deb
(packaging/debian/distsvc.install) install: neither build needs the generators.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ["COLUMNS"] = "80"  # argparse wraps usage lines to the terminal's width



def check_generators() -> None:
    """The generators installed are the versions pyproject.toml pins (another version writes
    other bytes, and the test comparing share/ with a fresh run would fail): else one line."""
    import importlib.metadata
    import tomllib

    pins = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = dict(re.fullmatch(r"([\w-]+)==([\w.]+)", spec).groups()  # type: ignore[union-attr]
                  for spec in pins["project"]["optional-dependencies"]["test"] if "==" in spec)
    for name in ("shtab", "argparse-manpage"):
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = "none"
        if have != wanted[name]:
            sys.exit(f"gen-docs.py: needs {name} {wanted[name]} (found: {have}); run it with the "
                     "test venv's Python: .venv/bin/python scripts/gen-docs.py "
                     "(scripts/setup.sh --test makes it)")


check_generators()

import argparse_manpage.manpage  # noqa: E402
import shtab  # noqa: E402

import distsvc  # noqa: E402
import distsvc.commands.main  # noqa: E402
import distsvc.commands.run  # noqa: E402
import distsvc.commands.shell  # noqa: E402

# zsh gets functions, called on a Tab that wants a host or a job: shtab.cmd's zsh form is a
# $(...) in the script's arrays, run every time the completion function runs (12 Python starts
# on any Tab after `distsvc`).
HOSTS = {**shtab.cmd("distsvc complete hosts 2>/dev/null"), "zsh": "_distsvc_hosts"}
JOBS = {**shtab.cmd("distsvc complete jobs 2>/dev/null"), "zsh": "_distsvc_jobs"}
ZSH_PREAMBLE = r"""
_distsvc_hosts() {
  local -a found
  found=(${(f)"$(distsvc complete hosts 2>/dev/null)"})
  compadd -a found
}
_distsvc_jobs() {
  local -a found
  found=(${(f)"$(distsvc complete jobs 2>/dev/null)"})
  compadd -a found
}
"""
COMMANDS = {"bash": "_distsvc_compgen_command_file", "zsh": "_command_names -e"}
# CMD ARGS of distsvc-run, `distsvc run` and `distsvc job start`: a command name on this
# machine's PATH until the command is on the line, then (its arguments) file names. The
# words before it are the subcommand's and the options with their values (VALUE_OPTIONS, from
# the parser: the options that take a value). ("_file" in the function's name: shtab then has
# bash treat the words offered as file names.)
BASH_PREAMBLE = r"""
_distsvc_value_options=" VALUE_OPTIONS "
_distsvc_compgen_command_file() {
  local i=1 word
  if [[ ${COMP_WORDS[0]##*/} == distsvc ]]; then  # after `run`, or `job start`
    [[ ${COMP_WORDS[1]} == job ]] && i=3 || i=2
  fi
  while (( i < COMP_CWORD )); do
    word=${COMP_WORDS[i]}
    if [[ $_distsvc_value_options == *" $word "* ]]; then
      (( i += 2 ))
    elif [[ $word == -* ]]; then
      (( i += 1 ))
    else
      compgen -f -- "$1"  # the command is there: these are its arguments
      return
    fi
  done
  compgen -c -- "$1" | sort -u
}
"""

SUMMARY = {
    "distsvc": "run commands on the least-loaded of your SSH hosts, and manage jobs",
    "distsvc-run": "run a command on the least-loaded of your SSH hosts, as if it ran here",
    "distsvc-shell": "open your login shell on the least-loaded of your SSH hosts",
}

EXIT_STATUS = {
    "distsvc": r"""
.TP
.B 0
success
.TP
.B 1
\fBinstall-units\fR could not write or remove a unit file (the reason on stderr)
.TP
.B 2
bad usage or configuration (one line on stderr naming every problem)
.TP
.B 3
\fBstatus\fR: no daemon is running (it says why, and the last start's failure)
.TP
.B 4
the job cannot do that now (\fBjob stop\fR of an ended job, ...)
.TP
.B 5
no such job
.TP
.B 125
\fBjob wait\fR: the job's dependency (\fB\-\-after\fR) failed
.TP
.B 126, 127
the command is not executable, or not found
.TP
.B 255
the command could not be run at all (no reachable host, a refused host key), or no daemon
.PP
\fBdistsvc run\fR exits with the command's own status; \fBjob wait\fR with the job's
(its exit code, 128+N for signal N, 124 timed out, 137 out of memory).
""",
    "distsvc-run": r"""
The command's own status, 128+N if signal N ended it;
.TP
.B 2
bad usage or configuration (one line on stderr naming every problem)
.TP
.B 126, 127
the command is not executable on the host, or not found there
.TP
.B 255
the command could not be run at all (no reachable host, a refused host key), with the
reason on stderr
""",
    "distsvc-shell": r"""
The shell's own status;
.TP
.B 2
bad usage or configuration
.TP
.B 255
no shell could be started (no reachable host, a refused host key)
""",
}

ENVIRONMENT = r"""
.TP
.B DISTSVC_HOSTS
the hosts, \fI[user@]host[:port]\fR separated by commas or semicolons, instead of the
configuration file's list (a name the file knows keeps its settings)
.TP
.B DISTSVC_DAEMON
\fBauto\fR (the default: through the daemon when its socket answers, else in this
process), \fBoff\fR (always in this process), \fBrequired\fR (fail when no daemon answers)
.TP
.B DISTSVC_LOG
the log level: debug, info, warning (the default of the commands; the daemon's and the
scan's is info)
.TP
.B XDG_CONFIG_HOME, XDG_STATE_HOME, XDG_RUNTIME_DIR
where the configuration, the state and the daemon's socket are (below)
.TP
.B SSH_AUTH_SOCK
the SSH agent whose keys log in to the hosts
.PP
The local environment is carried to the command on the host, less the variables the
configuration's \fBenv\fR table drops (see \fBdistsvc config check\fR); PATH is carried, less
the entries that are not searchable directories on the host.
"""

FILES = r"""
.TP
.I ~/.config/distsvc/config.toml
the configuration (\fB$XDG_CONFIG_HOME/distsvc/config.toml\fR): hosts, limits, jobs; a
commented example is \fI/usr/share/doc/distsvc/example.toml\fR
.TP
.I ~/.config/distsvc/environment.json
the saved environment (\fBdistsvc env\fR), mode 0600
.TP
.I ~/.local/state/distsvc/jobs/
every job's record and output (\fB$XDG_STATE_HOME/distsvc/jobs\fR)
.TP
.I $XDG_RUNTIME_DIR/distsvc/
the daemon's socket and the hosts' measurements; without a usable runtime directory the
socket is \fI/tmp/distsvc-USER-N\fR and the state \fI~/.local/state/distsvc/HOSTNAME/\fR
.TP
.I ~/.local/state/distsvc/HOSTNAME/daemon.log
the daemon's log when it runs outside systemd
.TP
.I /usr/lib/systemd/user/distsvc.socket, distsvc.service, distsvc-scan.timer, distsvc-scan.service
the user units of the Debian package (\fBsystemctl \-\-user enable \-\-now distsvc.socket
distsvc-scan.timer\fR); installed with pip, \fBdistsvc install-units\fR writes them to
\fI~/.config/systemd/user\fR (\fB\-\-system-wide\fR: \fI/etc/systemd/user\fR). Their log:
\fBjournalctl \-\-user \-u distsvc\fR
"""

SEE_ALSO = {
    "distsvc": r"\fBdistsvc-run\fR(1), \fBdistsvc-shell\fR(1), \fBssh\fR(1), \fBssh_config\fR(5)",
    "distsvc-run": r"\fBdistsvc\fR(1), \fBdistsvc-shell\fR(1), \fBssh\fR(1), \fBssh_config\fR(5)",
    "distsvc-shell": r"\fBdistsvc\fR(1), \fBdistsvc-run\fR(1), \fBssh\fR(1)",
}


def parsers() -> dict[str, argparse.ArgumentParser]:
    return {"distsvc": distsvc.commands.main.parser(),
            "distsvc-run": distsvc.commands.run.parser(),
            "distsvc-shell": distsvc.commands.shell.parser()}


def drop_hidden(parser: argparse.ArgumentParser) -> None:
    """Leave out the subcommands added without help (`distsvc complete`): --help does not list
    them, nor does shtab; argparse-manpage would give them a section."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest for choice in action._get_subactions()}
            for name in list(action.choices):
                if name not in listed:
                    del action.choices[name]
            for sub in action.choices.values():
                drop_hidden(sub)


def mark_completers(parser: argparse.ArgumentParser) -> None:
    """Tell shtab what each argument takes, where a name (a host, a job ID, a file) can be
    offered: by the argument's dest, the same in every subcommand that has it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                mark_completers(sub)
            continue
        complete: object = None
        if action.dest in ("id", "ids", "after"):
            complete = JOBS
        elif action.dest == "target_host" or "--host" in action.option_strings:
            complete = HOSTS
        elif action.dest in ("config", "log_file"):
            complete = shtab.FILE
        elif action.dest == "workdir":
            complete = shtab.DIRECTORY
        elif action.dest == "command":
            complete = COMMANDS
        if complete is not None:
            action.complete = complete  # type: ignore[attr-defined]


def value_options(parser: argparse.ArgumentParser) -> list[str]:
    """The option strings of `parser` and its subcommands that take a value (--memory 1G)."""
    found: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.update(value_options(sub))
        elif action.option_strings and action.nargs != 0:
            found.update(action.option_strings)
    return sorted(found)


def manpage(name: str, parser: argparse.ArgumentParser, date: str) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".h2m") as include:
        include.write(f"[EXIT STATUS]\n{EXIT_STATUS[name].strip()}\n\n"
                      f"[ENVIRONMENT]\n{ENVIRONMENT.strip()}\n\n"
                      f"[FILES]\n{FILES.strip()}\n\n"
                      f"[SEE ALSO]\n{SEE_ALSO[name]}\n")
        include.flush()
        page = argparse_manpage.manpage.Manpage(parser, {
            "project_name": "distsvc", "version": distsvc.__version__, "date": date,
            "description": SUMMARY[name], "manual_title": "distsvc manual",
            "include": include.name})
        return str(page)


def release_date() -> str:
    """The date of packaging/debian/changelog's newest entry: the page's date changes with a
    release, not with every run (argparse-manpage would put today's)."""
    import email.utils

    text = (ROOT / "packaging/debian/changelog").read_text(encoding="utf-8")
    line = re.search(r"^ -- .*?  (.*)$", text, re.M)
    assert line, "packaging/debian/changelog has no trailer line"
    return email.utils.parsedate_to_datetime(line.group(1)).date().isoformat()


def generate(out: Path) -> list[Path]:
    written = []
    date = release_date()
    for name, parser in parsers().items():
        drop_hidden(parser)
        mark_completers(parser)
        files = {
            out / "man/man1" / f"{name}.1": manpage(name, parser, date),
            out / "bash-completion/completions" / name:
                shtab.complete(parser, "bash", preamble=BASH_PREAMBLE.replace(
                    "VALUE_OPTIONS", " ".join(value_options(parser)))),
            out / "zsh/vendor-completions" / f"_{name}":
                shtab.complete(parser, "zsh", preamble=ZSH_PREAMBLE),
        }
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
            written.append(path)
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "share"
    for path in generate(out):
        print(path)
