"""distsvc.remote: the wrapper command line, run here through /bin/sh as sshd would run it.

Every wrapper runs in a session of its own (start_new_session=True), as under sshd: the
wrapper's watcher and kill_command end whole sessions, which must never be the test runner's.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

import distsvc.remote
import helpers
from distsvc.remote import ENV_END, environment_script, kill_command, new_token, wrapper

TRICKY = [
    "a b",
    "  two  spaces  ",
    "'",
    "it's",
    '"',
    'say "hi"',
    "$HOME",
    "${PATH}",
    "`id`",
    "$(id)",
    "a\nb",
    "\n",
    "",
    "-n",
    "--",
    "-e",
    "é☃ 日本",
    "*",
    "?",
    "[a]",
    "~",
    "\\",
    "\\n",
    "!",
    ";",
    "&&",
    "|",
    ">out",
    "#",
    "a\tb",
    "%s",
    "a\rb",
    ENV_END,
]

PRINT_ARGS = ["sh", "-c", 'printf "%s\\0" "$@"', "x"]


def shell_env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **extra}


def run_wrapper(argv: list[str], env: dict[str, str] | None = None, stdin: bytes = b"",
                workdir: str | None = None, token: str | None = None,
                env_from_file: bool = False, shell: dict[str, str] | None = None,
                cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run wrapper(argv) the way sshd runs a command: `sh -c LINE` in a new session."""
    command = wrapper(argv, workdir, token or new_token(), env_from_file, "testhost")
    data = stdin if env_from_file else environment_script(env or {}).encode() + stdin
    return subprocess.run(["/bin/sh", "-c", command], input=data, capture_output=True,
                          env=shell_env(**(shell or {})), cwd=cwd, timeout=60,
                          start_new_session=True)


def nul_split(output: bytes) -> list[str]:
    assert output.endswith(b"\0"), output
    return [part.decode() for part in output[:-1].split(b"\0")]


def env_of(output: bytes) -> dict[str, str]:
    """`env -0` output as a dict."""
    pairs = (item.partition("=") for item in nul_split(output))
    return {name: value for name, _, value in pairs}


def kill_leftovers(marker: str) -> None:
    for pid in helpers.sleeps_with(marker):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def unique_sleep() -> str:
    return f"300.{os.getpid()}{time.monotonic_ns() % 1_000_000}"


# --- argv ------------------------------------------------------------------------------------


def test_command_line_splits_back_exactly():
    assert shlex.split(distsvc.remote.command_line(TRICKY)) == TRICKY


def test_argv_survives_the_wrapper_exactly(tmp_path):
    result = run_wrapper([*PRINT_ARGS, *TRICKY], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert nul_split(result.stdout) == TRICKY
    assert list(tmp_path.iterdir()) == []  # ">out" was an argument, not a redirection


@pytest.mark.parametrize("arg", TRICKY)
def test_each_tricky_argument_alone(arg):
    result = run_wrapper([*PRINT_ARGS, arg])
    assert result.returncode == 0, result.stderr
    assert nul_split(result.stdout) == [arg]


def test_wrapper_is_one_exec_line_named_by_the_token():
    token = new_token()
    line = wrapper(["true"], None, token, False, "testhost")
    assert line.startswith("exec /bin/sh -c ")
    assert shlex.split(line)[-1] == f"distsvc-{token}"


# --- environment -----------------------------------------------------------------------------

TRICKY_ENV = {
    "NL": "a\nb\n",
    "ONLY_NL": "\n",
    "LEADING_NL": "\nx",
    "Q": "it's \"quoted\"",
    "DOLLAR": "$HOME $(id) `id` ${X} $$",
    "BS": "back\\slash\\n",
    "EMPTY": "",
    "SPACES": "  lead and trail  ",
    "UNI": "é☃ 日本",
    "EQ": "a=b=c",
    "TAB": "a\tb",
    "CR": "a\rb",
    "END": ENV_END,
    "END_AFTER_NL": "x\n" + ENV_END + "\ny",
    "lower_case": "x",
    "STAR": "*",
    "SEMI": "a; exit 3",
}


def test_environment_values_arrive_exactly():
    result = run_wrapper(["env", "-0"], env=TRICKY_ENV)
    assert result.returncode == 0, result.stderr
    received = env_of(result.stdout)
    assert {k: received.get(k) for k in TRICKY_ENV} == TRICKY_ENV


def test_environment_value_read_with_printf():
    value = "line1\nit's \"$HOME\" `x`\n\n"
    result = run_wrapper(["sh", "-c", 'printf "%s" "$V"'], env={"V": value})
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == value


def test_environment_script_is_one_line_per_variable_then_the_end_marker():
    script = environment_script(TRICKY_ENV)
    lines = script.split("\n")
    assert lines[-1] == ""
    assert lines[-2] == ENV_END
    assert len(lines) == len(TRICKY_ENV) + 2
    assert all(line.startswith("export ") for line in lines[:-2])


def test_empty_environment_is_just_the_end_marker():
    assert environment_script({}) == ENV_END + "\n"


NOT_IDENTIFIERS = {"BAD-NAME": "1", "1LEADING": "2", "has space": "3", "dot.name": "4",
                   "BASH_FUNC_f%%": "() { echo hi; }", "é": "5", "A=B": "6"}


def test_names_that_are_not_shell_identifiers_are_dropped():
    assert distsvc.remote.exportable({**NOT_IDENTIFIERS, "OK_1": "x", "_u": "y"}) == {
        "OK_1": "x", "_u": "y"}
    script = environment_script({**NOT_IDENTIFIERS, "GOOD": "yes"})
    assert script == f"export GOOD=yes\n{ENV_END}\n"


def test_names_that_are_not_shell_identifiers_are_skipped_by_the_wrapper():
    result = run_wrapper(["env", "-0"], env={**NOT_IDENTIFIERS, "GOOD": "yes"})
    assert result.returncode == 0, result.stderr
    received = env_of(result.stdout)
    assert received["GOOD"] == "yes"
    assert not set(received) & set(NOT_IDENTIFIERS)


def test_user_variables_named_p_and_w_do_not_break_the_wrapper():
    env = {"P": "not-a-pid", "W": "1"}
    result = run_wrapper(["sh", "-c", 'sleep 1; printf "%s %s" "$P" "$W"'], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"not-a-pid 1"


def test_user_variable_named_ds_p_does_not_break_the_wrapper():
    result = run_wrapper(["sh", "-c", "sleep 2; echo ok"], env={"_ds_p": "not-a-pid"})
    assert (result.returncode, result.stdout) == (0, b"ok\n")


def test_user_variable_named_ds_nl_does_not_corrupt_other_values():
    env = {"_ds_nl": "Z", "lower": "1\n2"}
    result = run_wrapper(["env", "-0"], env=env)
    assert result.returncode == 0, result.stderr
    assert env_of(result.stdout)["lower"] == "1\n2"


# --- stdin, working directory, exit status ---------------------------------------------------


def test_user_input_after_the_environment_reaches_the_command_unread():
    user_input = b"hello\n" + ENV_END.encode() + b"\nexport X=1\n\x00\xff\xfe binary, no newline"
    result = run_wrapper(["cat"], env={"A": "1"}, stdin=user_input)
    assert result.returncode == 0, result.stderr
    assert result.stdout == user_input


def test_large_user_input_passes_intact():
    user_input = bytes(range(256)) * 2048
    result = run_wrapper(["cat"], env={"A": "1\n2"}, stdin=user_input)
    assert result.returncode == 0, result.stderr
    assert result.stdout == user_input


def test_command_sees_end_of_input():
    result = run_wrapper(["wc", "-c"], env={"A": "1"}, stdin=b"12345")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == 5


def test_command_sees_end_of_input_when_there_is_no_user_input():
    result = run_wrapper(["cat"], env={"A": "1"})
    assert (result.returncode, result.stdout) == (0, b"")


def test_missing_workdir_exits_255_with_a_clear_message(tmp_path):
    missing = str(tmp_path / "no such dir")
    result = run_wrapper(["echo", "ran"], workdir=missing)
    assert result.returncode == distsvc.remote.WRAPPER_STATUS_NO_WORKDIR == 255
    assert result.stdout == b""
    (line,) = result.stderr.decode().splitlines()
    assert "no such directory" in line
    assert missing in line


def test_workdir_is_used(tmp_path):
    workdir = tmp_path / "it's a \"dir\" $HOME"
    workdir.mkdir()
    result = run_wrapper(["pwd"], workdir=str(workdir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == f"{workdir}\n"


def test_exit_status_passes_through():
    assert run_wrapper(["sh", "-c", "exit 7"]).returncode == 7
    assert run_wrapper(["false"]).returncode == 1
    assert run_wrapper(["true"]).returncode == 0


@pytest.mark.parametrize("signal_name,number", [("HUP", 1), ("INT", 2), ("KILL", 9),
                                                ("TERM", 15)])
def test_death_by_signal_gives_128_plus_n(signal_name, number):
    result = run_wrapper(["sh", "-c", f"kill -{signal_name} $$; sleep 5"])
    assert result.returncode == 128 + number


@pytest.mark.parametrize("shell", ["/bin/dash", "/bin/bash"])
def test_a_command_that_cannot_run_is_said_in_the_users_terms(tmp_path, shell):
    """What ssh's shell would say (127 not found, 126 not executable), naming the user's
    command and the host, never the wrapper's internal name."""
    (tmp_path / "noexec").write_text("#!/bin/sh\necho ran\n")
    (tmp_path / "dir").mkdir()
    cases = [(["distsvc-no-such-command-xyz", "a"], 127, "command not found"),
             (["./nope"], 127, "No such file or directory"),
             (["./noexec"], 126, "Permission denied"),
             (["./dir"], 126, "Permission denied"),
             ([str(tmp_path / "noexec")], 126, "Permission denied")]
    for argv, status, why in cases:
        command = wrapper(argv, str(tmp_path), new_token(), False, "build1")
        result = subprocess.run([shell, "-c", command], input=environment_script({}).encode(),
                                capture_output=True, env=shell_env(), timeout=60,
                                start_new_session=True)
        assert result.returncode == status, (argv, result.stderr)
        assert result.stderr.decode() == f"distsvc: {argv[0]}: {why} on build1\n", argv
        assert result.stdout == b""


def test_a_command_in_a_path_directory_that_is_not_executable_is_not_found(tmp_path):
    """bash's `command -v` finds a file without x in PATH; the shell would not run it."""
    (tmp_path / "tool").write_text("#!/bin/sh\n")
    result = run_wrapper(["tool"], env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert result.returncode in (126, 127), result.stderr
    assert result.stderr.decode().startswith("distsvc: tool: ")


def test_carried_path_entries_the_host_lacks_are_dropped_and_its_own_added(tmp_path):
    """The carried PATH keeps its order where the host has the directories; absolute entries
    it lacks (or that are not directories) go, relative ones stay (they are under the working
    directory, entered later), and the host's own PATH follows, without repeats."""
    here = tmp_path / "bin"
    here.mkdir()
    (tmp_path / "file").write_text("")
    carried = f"/nonexistent/bin:{here}:{tmp_path / 'file'}:node_modules/.bin:{here}:/usr/bin"
    result = run_wrapper(["sh", "-c", 'printf %s "$PATH"'], env={"PATH": carried},
                         shell={"PATH": "/usr/bin:/bin:/nonexistent/host"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == f"{here}:node_modules/.bin:/usr/bin:/bin"


def test_a_relative_path_entry_finds_a_command_under_the_working_directory(tmp_path):
    tools = tmp_path / "work" / "node_modules" / ".bin"
    tools.mkdir(parents=True)
    (tools / "mytool").write_text("#!/bin/sh\necho tool ran\n")
    (tools / "mytool").chmod(0o755)
    result = run_wrapper(["mytool"], env={"PATH": "node_modules/.bin:/usr/bin:/bin"},
                         workdir=str(tmp_path / "work"))
    assert (result.returncode, result.stdout) == (0, b"tool ran\n"), result.stderr


def test_a_command_only_the_hosts_path_has_is_found():
    result = run_wrapper(["sh", "-c", "echo ran"], env={"PATH": "/nonexistent/local/bin"})
    assert (result.returncode, result.stdout, result.stderr) == (0, b"ran\n", b"")


def test_watcher_is_gone_when_the_command_ends():
    token = new_token()
    child = subprocess.Popen(
        ["/bin/sh", "-c", wrapper(["true"], None, token, False, "testhost")],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=shell_env(),
        start_new_session=True)
    child.communicate(environment_script({}).encode(), timeout=60)
    assert child.returncode == 0
    session = str(child.pid)
    deadline = time.monotonic() + 5
    while True:
        out = subprocess.run(["ps", "-eo", "sid="], capture_output=True, text=True).stdout
        if session not in out.split():
            break
        assert time.monotonic() < deadline, "a process of the wrapper's session is still alive"
        time.sleep(0.1)


# --- kill_command ----------------------------------------------------------------------------


@pytest.mark.parametrize("signal_name", ["term", "SIGTERM;", "TERM; rm -rf ~", "", "TE RM",
                                         "-9", "$(id)", "TERM\n"])
def test_kill_command_rejects_bad_signal_names(signal_name):
    with pytest.raises(ValueError):
        kill_command("abc123", signal_name)


@pytest.mark.parametrize("token", ["", "ABC", "xyz", "ab cd", "$(id)", "ab;cd", "0a\n"])
def test_kill_command_rejects_bad_tokens(token):
    with pytest.raises(ValueError):
        kill_command(token, "TERM")


def test_kill_command_accepts_a_real_token_and_signal():
    line = kill_command(new_token(), "TERM")
    assert line.startswith("exec /bin/sh -c ")
    assert shlex.split(line)[-1] == "distsvc-kill"


@pytest.mark.parametrize(("script", "signal_name", "status"), [
    ("sleep {m} & sleep {m}; wait", "TERM", 128 + 15),
    # A non-interactive shell's background jobs ignore SIGINT: kill_command escalates.
    ("sleep {m} & sleep {m} & wait", "INT", 128 + 2),
])
def test_kill_command_ends_the_wrapped_command_tree(script, signal_name, status):
    token = new_token()
    marker = unique_sleep()
    child = subprocess.Popen(
        ["/bin/sh", "-c", wrapper(["sh", "-c", script.format(m=marker)], None, token, False,
                                  "testhost")],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=shell_env(), start_new_session=True)
    try:
        assert child.stdin is not None
        child.stdin.write(environment_script({}).encode())
        child.stdin.close()
        deadline = time.monotonic() + 20
        while len(helpers.sleeps_with(marker)) < 2:
            assert time.monotonic() < deadline, "the command did not start"
            time.sleep(0.05)
        killer = subprocess.run(["/bin/sh", "-c", kill_command(token, signal_name)],
                                capture_output=True, env=shell_env(), timeout=60,
                                start_new_session=True)
        assert killer.returncode == 0, killer.stderr
        assert child.wait(timeout=30) == status
        deadline = time.monotonic() + 10
        while helpers.sleeps_with(marker):
            assert time.monotonic() < deadline, "part of the command's tree survived"
            time.sleep(0.1)
    finally:
        # The wrapper leads a process group of its own (its session): end what is left of it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        kill_leftovers(marker)


def test_kill_command_for_an_unknown_token_does_nothing():
    result = subprocess.run(["/bin/sh", "-c", kill_command(new_token(), "TERM")],
                            capture_output=True, env=shell_env(), timeout=30,
                            start_new_session=True)
    assert result.returncode == 0


# --- environment through a 0600 file (terminal mode) -----------------------------------------


def write_env_file(tmp_path: Path, token: str, env: dict[str, str]
                   ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["/bin/sh", "-c", distsvc.remote.env_file_writer(token)],
                          input=environment_script(env).encode(), capture_output=True,
                          env=shell_env(TMPDIR=str(tmp_path)), timeout=30)


def test_env_file_writer_stores_the_script_readable_by_the_user_only(tmp_path):
    token = new_token()
    result = write_env_file(tmp_path, token, {"SECRET": "s3cr3t\n'x'"})
    assert result.returncode == 0, result.stderr
    path = tmp_path / f"distsvc-env-{token}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == environment_script({"SECRET": "s3cr3t\n'x'"})


def test_env_file_writer_does_not_overwrite_an_existing_file(tmp_path):
    token = new_token()
    assert write_env_file(tmp_path, token, {"A": "first"}).returncode == 0
    assert write_env_file(tmp_path, token, {"A": "second"}).returncode != 0
    assert (tmp_path / f"distsvc-env-{token}").read_text() == environment_script({"A": "first"})


def test_wrapper_reads_the_env_file_and_deletes_it(tmp_path):
    token = new_token()
    assert write_env_file(tmp_path, token, TRICKY_ENV).returncode == 0
    result = run_wrapper(["env", "-0"], token=token, env_from_file=True,
                         shell={"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    received = env_of(result.stdout)
    assert {k: received.get(k) for k in TRICKY_ENV} == TRICKY_ENV
    assert not (tmp_path / f"distsvc-env-{token}").exists()


def test_env_file_mode_leaves_stdin_to_the_command(tmp_path):
    token = new_token()
    assert write_env_file(tmp_path, token, {"V": "v\n"}).returncode == 0
    result = run_wrapper(["sh", "-c", 'printf "%s" "$V"; cat'], token=token,
                         env_from_file=True, stdin=b"user input\n" + ENV_END.encode(),
                         shell={"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"v\nuser input\n" + ENV_END.encode()


def test_env_file_mode_prints_nothing_on_stderr(tmp_path):
    """The file ends with the ENV_END line, which must not be run as a command."""
    token = new_token()
    assert write_env_file(tmp_path, token, {"V": "1"}).returncode == 0
    result = run_wrapper(["true"], token=token, env_from_file=True,
                         shell={"TMPDIR": str(tmp_path)})
    assert result.returncode == 0
    assert result.stderr == b""


def test_user_variable_named_ds_f_does_not_redirect_the_env_file_removal(tmp_path):
    token = new_token()
    victim = tmp_path / "precious"
    victim.write_text("keep me")
    assert write_env_file(tmp_path, token, {"_ds_f": str(victim)}).returncode == 0
    result = run_wrapper(["true"], token=token, env_from_file=True,
                         shell={"TMPDIR": str(tmp_path)})
    assert result.returncode == 0
    assert victim.exists()
    assert not (tmp_path / f"distsvc-env-{token}").exists()
