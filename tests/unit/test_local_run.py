"""distsvc-run with no hosts: the command runs here, with the same status and signal rules."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import helpers

DISTSVC_RUN = Path(sys.executable).parent / "distsvc-run"
NOTICE = "distsvc: no hosts configured; running on this machine"


def client_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "home"
    runtime = tmp_path / "run"
    for directory in (home, runtime):
        directory.mkdir(mode=0o700, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_RUNTIME_DIR": str(runtime),
        "LANG": "C.UTF-8",
    }
    env.update(extra)
    assert "DISTSVC_HOSTS" not in env
    return env


def distsvc_run(tmp_path: Path, *args: str, input: bytes | None = b"", **extra: str
                ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(DISTSVC_RUN), *args], input=input, capture_output=True,
                          env=client_env(tmp_path, **extra), cwd=tmp_path, timeout=60)


def stderr_lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return result.stderr.decode().splitlines()


def test_exit_status_passes_through(tmp_path):
    result = distsvc_run(tmp_path, "sh", "-c", "exit 3")
    assert result.returncode == 3
    assert stderr_lines(result) == [NOTICE]


def test_success_is_zero(tmp_path):
    assert distsvc_run(tmp_path, "true").returncode == 0


def test_death_by_signal_gives_128_plus_n(tmp_path):
    result = distsvc_run(tmp_path, "sh", "-c", "kill -TERM $$")
    assert result.returncode == 128 + signal.SIGTERM


def test_death_by_sigkill_gives_137(tmp_path):
    assert distsvc_run(tmp_path, "sh", "-c", "kill -KILL $$").returncode == 137


def test_stdin_and_stdout_pass_through(tmp_path):
    result = subprocess.run(f"echo hi | {DISTSVC_RUN} cat", shell=True, capture_output=True,
                            env=client_env(tmp_path), cwd=tmp_path, timeout=60)
    assert result.returncode == 0
    assert result.stdout == b"hi\n"


def test_exactly_one_notice_line_on_stderr(tmp_path):
    result = distsvc_run(tmp_path, "cat", input=b"hi\n")
    assert result.stdout == b"hi\n"
    lines = stderr_lines(result)
    assert len(lines) == 1
    assert "no hosts configured" in lines[0]


@pytest.mark.parametrize("flag", ["-q", "--quiet"])
def test_quiet_silences_the_notice(tmp_path, flag):
    result = distsvc_run(tmp_path, flag, "cat", input=b"hi\n")
    assert result.returncode == 0
    assert result.stdout == b"hi\n"
    assert result.stderr == b""


def test_command_stderr_is_passed_through_after_the_notice(tmp_path):
    result = distsvc_run(tmp_path, "sh", "-c", "echo oops >&2")
    assert stderr_lines(result) == [NOTICE, "oops"]


def test_arguments_pass_through_exactly(tmp_path):
    args = ["a b", "", "$HOME", "`id`", "it's", "-n", "a\nb", "é☃"]
    result = distsvc_run(tmp_path, "-q", "--", "sh", "-c", 'printf "%s\\0" "$@"', "x", *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(b"\0")[:-1] == [a.encode() for a in args]


def test_options_of_the_command_are_not_taken_as_distsvc_options(tmp_path):
    result = distsvc_run(tmp_path, "-q", "sh", "-c", 'printf "%s," "$@"', "x", "-q", "-n", "-w",
                         "--config")
    assert (result.returncode, result.stdout) == (0, b"-q,-n,-w,--config,")


@pytest.mark.parametrize("args", [[], ["--"], ["-q"]])
def test_no_command_is_a_one_line_usage_error(tmp_path, args):
    result = distsvc_run(tmp_path, *args)
    assert result.returncode == 2
    lines = stderr_lines(result)
    assert len(lines) == 1
    assert lines[0].startswith("distsvc: no command given")
    assert result.stdout == b""


def test_command_not_found_is_127(tmp_path):
    result = distsvc_run(tmp_path, "-q", "distsvc-no-such-command-xyz")
    assert result.returncode == 127
    assert stderr_lines(result) == ["distsvc: distsvc-no-such-command-xyz: command not found"]


def test_command_not_executable_is_126(tmp_path):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o644)
    result = distsvc_run(tmp_path, "-q", str(script))
    assert result.returncode == 126
    assert result.stdout == b""
    assert len(stderr_lines(result)) == 1


def test_workdir_option_sets_the_directory(tmp_path):
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    result = distsvc_run(tmp_path, "-q", "-w", str(workdir), "pwd")
    assert (result.returncode, result.stdout) == (0, f"{workdir}\n".encode())


def test_missing_workdir_is_reported_as_such(tmp_path):
    result = distsvc_run(tmp_path, "-q", "-w", str(tmp_path / "missing"), "true")
    assert result.returncode == 255
    assert "no such directory" in result.stderr.decode()


def test_environment_is_passed_and_saved_variables_are_added(tmp_path):
    saved = tmp_path / "home" / ".config" / "distsvc" / "environment.json"
    saved.parent.mkdir(parents=True)
    saved.write_text(json.dumps({"SAVED_VAR": "from file", "LIVE_VAR": "overridden"}))
    result = distsvc_run(tmp_path, "-q", "sh", "-c", 'printf "%s|%s" "$SAVED_VAR" "$LIVE_VAR"',
                         LIVE_VAR="live")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"from file|overridden"


def test_corrupt_saved_environment_is_a_one_line_error(tmp_path):
    saved = tmp_path / "home" / ".config" / "distsvc" / "environment.json"
    saved.parent.mkdir(parents=True)
    saved.write_text("{broken")
    result = distsvc_run(tmp_path, "-q", "echo", "ran")
    assert result.returncode == 2
    assert result.stdout == b""
    (line,) = stderr_lines(result)
    assert line.startswith(f"distsvc: saved environment {saved} is unreadable")


def test_bad_config_file_is_a_one_line_error_and_the_command_does_not_run(tmp_path):
    config = tmp_path / "home" / ".config" / "distsvc" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[[hosts]]\nport = 22\n")
    result = distsvc_run(tmp_path, "echo", "ran")
    assert result.returncode == 2
    assert result.stdout == b""
    (line,) = stderr_lines(result)
    assert line == f"distsvc: invalid configuration in {config}: hosts[0].name: is required"


# --- signals sent to distsvc-run end the whole tree ------------------------------------------


def signal_tree(tmp_path: Path, signum: int) -> tuple[int, list[int]]:
    """Start distsvc-run over two background sleeps, signal it; its status and survivors."""
    marker = f"300.{os.getpid()}{signum}{time.monotonic_ns() % 100_000}"
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err:
        # Output to files, not pipes: a surviving sleep would hold a pipe open.
        child = subprocess.Popen(
            [str(DISTSVC_RUN), "sh", "-c", f"sleep {marker} & sleep {marker} & wait"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            env=client_env(tmp_path), cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(helpers.sleeps_with(marker)) < 2:
            assert child.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, "the command did not start"
            time.sleep(0.05)
        child.send_signal(signum)
        status = child.wait(timeout=30)
        deadline = time.monotonic() + 5
        while helpers.sleeps_with(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        return status, helpers.sleeps_with(marker)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for pid in helpers.sleeps_with(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_to_distsvc_run_ends_the_whole_tree(tmp_path):
    status, survivors = signal_tree(tmp_path, signal.SIGTERM)
    assert survivors == []
    assert status == 128 + signal.SIGTERM


def test_sigint_to_distsvc_run_ends_the_whole_tree(tmp_path):
    status, survivors = signal_tree(tmp_path, signal.SIGINT)
    assert survivors == []
    assert status == 128 + signal.SIGINT


def test_sigint_to_distsvc_run_ends_the_foreground_command_with_130(tmp_path):
    """The part of SIGINT handling that works: the command's own status is 128+2."""
    status, _ = signal_tree(tmp_path, signal.SIGINT)
    assert status == 128 + signal.SIGINT


def test_sighup_to_distsvc_run_ends_the_whole_tree(tmp_path):
    status, survivors = signal_tree(tmp_path, signal.SIGHUP)
    assert survivors == []
    assert status == 128 + signal.SIGHUP


def test_a_closed_output_ends_the_command_by_sigpipe_as_a_shell_has_it(tmp_path):
    """`distsvc-run yes | head -1`: yes writes to the pipe itself and dies of SIGPIPE (141),
    and distsvc-run returns with it (no cluster: nothing of ours needs ending)."""
    script = '{ "$@"; echo "$?" >&3; } 3>status | head -1'
    done = subprocess.run(["sh", "-c", script, "sh", str(DISTSVC_RUN), "yes"],
                          capture_output=True, env=client_env(tmp_path), cwd=tmp_path,
                          timeout=60)
    assert done.stdout == b"y\n"
    assert (tmp_path / "status").read_text() == "141\n"


def test_reader_gone_is_seen_on_a_pipe_whose_reader_closed() -> None:
    from distsvc.adapters import local

    read_end, write_end = os.pipe()
    try:
        assert not local.reader_gone([write_end])
        os.close(read_end)
        assert local.reader_gone([write_end])
    finally:
        os.close(write_end)
