"""Shell completion (share/bash-completion, share/zsh: scripts/gen-docs.py) driven in a real
bash with bash-completion 2.11 loaded and a real zsh, and the hidden `distsvc complete` those
scripts call for host names and job IDs (commands/complete.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import distsvc.commands.complete
from distsvc.jobs import store
from distsvc.jobs.limits import Limits
from distsvc.jobs.record import Job

ROOT = Path(__file__).resolve().parent.parent
SHARE = ROOT / "share"
BIN = Path(sys.executable).parent  # the venv's distsvc, which the scripts call
BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")

# Sources bash-completion and the script, sets the words as a Tab after the last one would,
# calls the script's function and prints what it offers, one a line.
DRIVE = r"""
source /usr/share/bash-completion/bash_completion
source "$1"; func=$2; shift 2
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))
COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
"$func" "${COMP_WORDS[0]}" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


def home_env(home: Path, **extra: str) -> dict[str, str]:
    env = {"HOME": str(home), "PATH": f"{BIN}:/usr/bin:/bin", "LC_ALL": "C.UTF-8",
           "XDG_RUNTIME_DIR": str(home / "run"), **extra}
    (home / "run").mkdir(mode=0o700, exist_ok=True)
    return env


def bash_complete(env: dict[str, str], program: str, *words: str) -> list[str]:
    """What a Tab after `program words...` offers in bash (the last word: the one typed)."""
    function = "_shtab_" + program.replace("-", "_")
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", DRIVE, "drive",
         str(SHARE / "bash-completion/completions" / program), function, program, *words],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return sorted(set(result.stdout.split()))


def write_config(home: Path, *names: str) -> None:
    directory = home / ".config/distsvc"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.toml").write_text(
        "".join(f'[[hosts]]\nname = "{name}"\n' for name in names), encoding="utf-8")


def make_jobs(home: Path, count: int) -> list[str]:
    """Jobs made through the real store, where the daemon keeps them."""
    root = home / ".local/state/distsvc/jobs"
    ids = []
    for _ in range(count):
        id = store.new_id(root)
        store.create(root, Job(
            id=id, name=None, argv=["true"], cwd="/", env_names=[], limits=Limits(),
            not_enforced={}, isolation=[], placement={"kind": "local"}, state="exited",
            created=1000.0 + int(id)))
        ids.append(id)
    return ids


def test_bash_completion_is_installed_for_these_tests() -> None:
    assert BASH_COMPLETION.is_file(), "scripts/setup.sh --test installs bash-completion"


def test_bash_completes_a_subcommand_and_a_job_verb(tmp_path: Path) -> None:
    env = home_env(tmp_path)
    assert bash_complete(env, "distsvc", "jo") == ["job"]
    assert bash_complete(env, "distsvc", "job", "st") == ["start", "status", "stop"]
    assert "complete" not in bash_complete(env, "distsvc", "")  # hidden


def test_bash_completes_options(tmp_path: Path) -> None:
    env = home_env(tmp_path)
    assert bash_complete(env, "distsvc", "job", "start", "--me") == ["--memory"]
    assert bash_complete(env, "distsvc-run", "--det") == ["--detach"]
    assert bash_complete(env, "distsvc-shell", "--wo") == ["--workdir"]


def test_bash_completes_configured_host_names(tmp_path: Path) -> None:
    write_config(tmp_path, "alpha", "alpine", "beta")
    env = home_env(tmp_path)
    assert bash_complete(env, "distsvc", "job", "list", "--host", "al") == ["alpha", "alpine"]
    assert bash_complete(env, "distsvc", "job", "start", "--host", "") == [
        "alpha", "alpine", "beta"]
    assert bash_complete(env, "distsvc-run", "--host", "b") == ["beta"]
    # DISTSVC_HOSTS replaces the file's list, as for every command
    assert bash_complete({**env, "DISTSVC_HOSTS": "gamma,u@delta:2222"}, "distsvc-run",
                         "--host", "") == ["delta", "gamma"]


def test_bash_completes_job_ids(tmp_path: Path) -> None:
    first, second = make_jobs(tmp_path, 2)
    env = home_env(tmp_path)
    for verb in ("status", "logs", "stop", "wait", "pause", "resume", "remove"):
        assert bash_complete(env, "distsvc", "job", verb, "") == sorted([first, second]), verb
    assert bash_complete(env, "distsvc", "job", "start", "--after", "") == sorted(
        [first, second])
    assert bash_complete(env, "distsvc-run", "--after", second) == [second]


def test_bash_completes_the_command_then_files(tmp_path: Path) -> None:
    env = home_env(tmp_path)
    assert "true" in bash_complete(env, "distsvc-run", "tru")
    # past the options and their values (--memory 1G), the subcommand's words
    assert "true" in bash_complete(env, "distsvc", "job", "start", "--memory", "1G", "tru")
    assert "true" in bash_complete(env, "distsvc", "run", "--all", "-j", "2", "tru")
    assert "true" in bash_complete(env, "distsvc-run", "-w", "/tmp", "--", "tru")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "input.txt").write_text("")
    result = subprocess.run(
        ["bash", "--norc", "-c", f"cd {tmp_path}/work && bash --norc -c \"$0\" drive \"$@\"",
         DRIVE, str(SHARE / "bash-completion/completions/distsvc-run"), "_shtab_distsvc_run",
         "distsvc-run", "cat", "inp"],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.stdout.split() == ["input.txt"], result.stderr


def test_bash_completion_with_no_config_and_no_store_offers_nothing_and_says_nothing(
        tmp_path: Path) -> None:
    env = home_env(tmp_path, DISTSVC_HOSTS="bad host spec:x")
    assert bash_complete(env, "distsvc", "job", "list", "--host", "") == []
    assert bash_complete(env, "distsvc", "job", "status", "") == []


def test_bash_completion_loader_finds_the_scripts_by_command_name(tmp_path: Path) -> None:
    """bash-completion's on-demand loading (how an installed script is found: a file named
    as the command in DIR/bash-completion/completions for DIR in XDG_DATA_DIRS)."""
    env = home_env(tmp_path, XDG_DATA_DIRS=f"{SHARE}:/usr/share")
    for program in ("distsvc", "distsvc-run", "distsvc-shell"):
        result = subprocess.run(
            ["bash", "--norc", "-c", f"source {BASH_COMPLETION}; __load_completion {program}; "
             f"complete -p {program}"], env=env, capture_output=True, text=True, timeout=60)
        assert f"_shtab_{program.replace('-', '_')} {program}" in result.stdout, result.stderr


# --- zsh ----------------------------------------------------------------------------------


def zsh(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["zsh", "-f", "-c", script], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("program", ["distsvc", "distsvc-run", "distsvc-shell"])
def test_zsh_finds_and_loads_the_script(program: str, tmp_path: Path) -> None:
    """As installed: a file _PROGRAM in a directory of fpath (Debian's zsh has
    /usr/share/zsh/vendor-completions there), found by compinit and autoloaded."""
    env = home_env(tmp_path)
    result = zsh(f"fpath=({SHARE}/zsh/vendor-completions $fpath); autoload -U compinit; "
                 f"compinit -u -d {tmp_path}/zcompdump; print -r -- ${{_comps[{program}]}}; "
                 f"autoload +X _{program} && whence -w _{program}", env)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.split() == [f"_{program}", f"_{program}:", "function"]


# An interactive zsh under zpty (a pseudo-terminal, as a user's): compinit with the scripts'
# directory in fpath, and compadd wrapped to print each match it is given as <HIT>MATCH (the
# way zsh-capture-completion does). DRIVE types BUFFER and a Tab, then reads until every word
# of EXPECT was offered (or 30 s have passed) and prints what it read.
ZSH_SETUP = r"""
PROMPT='> '
fpath=($FUNCDIR $fpath)
autoload -U compinit; compinit -u -d $DUMP
compadd() {
  if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return; fi
  local -a hits; builtin compadd -A hits "$@"
  local h; for h in $hits; do print -r -- "<HIT>$h"; done
  builtin compadd "$@"
}
bindkey '^I' complete-word
print -r -- "<READY>"
"""
ZSH_DRIVE = r"""
zmodload zsh/zpty
zpty z "zsh -f -i"
zpty -w z "source $SETUP"
zpty -r z line '*<READY>*'
zpty -n -w z "$BUFFER"$'\t'
out=
integer i
for i in {1..300}; do
  zpty -r -t z chunk && out+=$chunk || sleep 0.1
  local all=1 word
  for word in ${=EXPECT}; do [[ $out == *"<HIT>$word"$'\r'* ]] || all=; done
  [[ -n $all ]] && break
done
print -r -- "$out"
zpty -d z
"""


def zsh_offers(env: dict[str, str], buffer: str, expect: list[str], tmp_path: Path
               ) -> set[str]:
    (tmp_path / "setup.zsh").write_text(ZSH_SETUP)
    result = zsh(ZSH_DRIVE, {**env, "FUNCDIR": str(SHARE / "zsh/vendor-completions"),
                             "DUMP": str(tmp_path / "zcompdump"),
                             "SETUP": str(tmp_path / "setup.zsh"), "BUFFER": buffer,
                             "EXPECT": " ".join(expect)})
    return {line.split("<HIT>", 1)[1].strip() for line in result.stdout.splitlines()
            if "<HIT>" in line}


@pytest.mark.timeout(180)
def test_zsh_completes_job_ids_and_host_names(tmp_path: Path) -> None:
    first, second = make_jobs(tmp_path, 2)
    write_config(tmp_path, "alpha", "beta")
    env = home_env(tmp_path)
    assert zsh_offers(env, "distsvc job status ", [first, second], tmp_path) == {first, second}
    assert zsh_offers(env, "distsvc-run --host ", ["alpha", "beta"], tmp_path) == {
        "alpha", "beta"}


# --- the hidden command -------------------------------------------------------------------


def run_complete(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "distsvc"), "complete", *args], env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_complete_prints_host_names_in_the_configs_order(tmp_path: Path) -> None:
    write_config(tmp_path, "zeta", "alpha")
    result = run_complete(home_env(tmp_path), "hosts")
    assert (result.returncode, result.stdout, result.stderr) == (0, "zeta\nalpha\n", "")
    other = tmp_path / "other.toml"
    other.write_text('[[hosts]]\nname = "x"\n')
    assert run_complete(home_env(tmp_path), "hosts", "--config", str(other)).stdout == "x\n"


def test_complete_prints_job_ids_newest_first(tmp_path: Path) -> None:
    first, second = make_jobs(tmp_path, 2)
    result = run_complete(home_env(tmp_path), "jobs")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{second}\n{first}\n", "")


@pytest.mark.parametrize("config", ["[[hosts]]\nname = ", "hosts = 3\n", "\xff"])
def test_complete_with_a_bad_config_prints_nothing(config: str, tmp_path: Path) -> None:
    (tmp_path / ".config/distsvc").mkdir(parents=True)
    (tmp_path / ".config/distsvc/config.toml").write_text(config, encoding="latin-1")
    result = run_complete(home_env(tmp_path), "hosts")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_complete_with_no_store_or_an_unreadable_one_prints_nothing(tmp_path: Path) -> None:
    assert run_complete(home_env(tmp_path), "jobs").stdout == ""
    (tmp_path / ".local/state/distsvc").mkdir(parents=True)
    (tmp_path / ".local/state/distsvc/jobs").write_text("not a directory")
    result = run_complete(home_env(tmp_path), "jobs")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_complete_is_hidden_from_help(tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "distsvc"), "--help"], env=home_env(tmp_path),
                            capture_output=True, text=True, timeout=60)
    assert "complete" not in result.stdout and " job " in result.stdout


def test_complete_host_names_and_job_ids_unit(tmp_path: Path) -> None:
    write_config(tmp_path, "a", "b")
    environ = {"HOME": str(tmp_path)}
    assert distsvc.commands.complete.host_names(None, environ) == ["a", "b"]
    assert distsvc.commands.complete.host_names(None, {**environ, "DISTSVC_HOSTS": "c"}) == ["c"]
    assert distsvc.commands.complete.host_names(tmp_path / "missing.toml", environ) == []
    assert distsvc.commands.complete.job_ids(environ) == []
    ids = make_jobs(tmp_path, 3)
    assert distsvc.commands.complete.job_ids(environ) == ids[::-1]


# Runs the command in this interpreter and prints which modules it loaded that talk to the
# daemon or to SSH hosts, and the processes it left: none of either.
NO_DAEMON_NO_SSH = r"""
import json, os, sys
import distsvc.commands.main
status = distsvc.commands.main.main(["complete", sys.argv[1]])
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "paramiko"
                or name.startswith(("distsvc.actions", "distsvc.adapters.ssh",
                                    "distsvc.adapters.unix", "distsvc.daemon")))
children = open(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read().split()
print(json.dumps({"status": status, "loaded": loaded, "children": children}))
"""


@pytest.mark.parametrize("what", ["hosts", "jobs"])
def test_complete_starts_no_daemon_and_opens_no_ssh(what: str, tmp_path: Path) -> None:
    """Hosts that exist in the config but could not be reached (a closed loopback port): the
    names come back all the same, with no SSH or daemon code even loaded, no child process
    and no socket made in the runtime directory."""
    (tmp_path / ".config/distsvc").mkdir(parents=True)
    (tmp_path / ".config/distsvc/config.toml").write_text(
        '[[hosts]]\nname = "h1"\naddress = "127.0.0.1"\nport = 1\n')
    make_jobs(tmp_path, 1)
    env = home_env(tmp_path, DISTSVC_DAEMON="required")
    result = subprocess.run([sys.executable, "-c", NO_DAEMON_NO_SSH, what], env=env,
                            capture_output=True, text=True, timeout=60)
    lines = result.stdout.splitlines()
    report = json.loads(lines[-1])
    assert report == {"status": 0, "loaded": [], "children": []}, result.stderr
    assert lines[:-1] == (["h1"] if what == "hosts" else ["1"])
    assert os.listdir(tmp_path / "run") == []
