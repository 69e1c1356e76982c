"""The pure pieces of `distsvc-run --on`: srun's command line, the guard (run by a real
/bin/sh, as on a node), the check before srun and how its answer is read."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import distsvc.actions.run
import distsvc.config
import distsvc.errors
import distsvc.slurm
from distsvc.jobs import limits as job_limits

CLUSTER = distsvc.config.Cluster(name="c1", login=distsvc.config.Host(name="login1"),
                                 partition="short")
HERE = distsvc.config.Cluster(name="c2")


def test_srun_argv_names_the_job_and_ends_it_on_one_interrupt() -> None:
    argv = distsvc.slurm.srun_argv(["--mem=10M"], "ab12", "/w d", ["echo", "a b"], False)
    assert argv[:5] == ["srun", "--job-name=distsvc-run-ab12", "--quit-on-interrupt",
                        "--mem=10M", "--chdir=/w d"]
    assert argv[5:9] == ["--", "/bin/sh", "-c", distsvc.slurm.GUARD]
    assert argv[9:] == [distsvc.slurm.GUARD_NAME, "/w d", "echo", "a b"]


def test_srun_argv_with_a_terminal_and_without_stdin() -> None:
    argv = distsvc.slurm.srun_argv([], "t", "/", ["sh"], True, stdin=False)
    assert argv[argv.index("--") - 2:argv.index("--")] == ["--pty", "--input=none"]


def guard(tmp_path: Path, workdir: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", distsvc.slurm.GUARD, distsvc.slurm.GUARD_NAME,
                           workdir, *argv], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": os.environ["PATH"], "SLURMD_NODENAME": "n7"})


@pytest.mark.parametrize("name", ["plain", "with space", "it's", "$(touch x)", "-n", "a\nb"])
def test_the_guard_runs_the_command_in_the_directory(tmp_path: Path, name: str) -> None:
    (tmp_path / name).mkdir()
    done = guard(tmp_path, str(tmp_path / name), "sh", "-c", 'pwd; printf "%s|" "$@"', "0",
                 "a b", "$HOME", "")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path / name}\na b|$HOME||"
    assert not (tmp_path / "x").exists()


def test_the_guard_refuses_a_missing_directory_naming_the_node(tmp_path: Path) -> None:
    done = guard(tmp_path, "/no such dir", "touch", str(tmp_path / "ran"))
    assert done.returncode == distsvc.slurm.NO_DIRECTORY_STATUS == 255
    assert done.stderr == ("distsvc: /no such dir: no such directory on node n7 (choose one "
                           "the nodes have with --workdir)\n")
    assert not (tmp_path / "ran").exists()


def test_the_guard_says_a_command_is_not_found_as_a_shell_would(tmp_path: Path) -> None:
    done = guard(tmp_path, str(tmp_path), "no-such-command-here")
    assert done.returncode == 127
    assert done.stderr == "distsvc: no-such-command-here: command not found on node n7\n"


def at(directory: str) -> str:
    """The check's first line for `directory`."""
    return f"distsvc-directory={os.fsencode(directory).hex()}\n"


def answer(script_out: str, code: int = 0, cluster: distsvc.config.Cluster = CLUSTER) -> str:
    return distsvc.slurm.check_answer(cluster, "its login node login1", "/w",
                                      ["--time=00:05:00"], code, at("/w") + script_out)


def test_the_check_script_quotes_what_it_is_given(tmp_path: Path) -> None:
    """Run for real with a stand-in srun on PATH: the directory and options arrive whole."""
    (tmp_path / "d 'x'").mkdir()
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text('#!/bin/sh\nprintf "%s|" "$@"; echo; exit 1\n')
    srun.chmod(0o755)
    script = distsvc.slurm.check_script(str(tmp_path / "d 'x'"), ["--account=a b"])
    done = subprocess.run(["/bin/sh", "-s"], input=script, capture_output=True, text=True,
                          env={"PATH": f"{srun.parent}:/usr/bin:/bin"})
    assert done.stdout == (at(f"{tmp_path}/d 'x'") +
                           "--test-only|--account=a b|true|distsvc-check-0|\ndistsvc-test=1\n")
    missing = subprocess.run(["/bin/sh", "-s"], input=distsvc.slurm.check_script(
        str(tmp_path / "nope"), []), capture_output=True, text=True)
    assert missing.stdout == "distsvc-no-directory\n"


def test_an_answer_that_slurm_takes() -> None:
    taken = ("srun: Job 2 to start at 2026-12-02T05:33:54 using 1 processors on nodes vm in "
             "partition debug\ndistsvc-test=0\n")
    assert distsvc.slurm.check_answer(CLUSTER, "there", "rel", [], 0,
                                      at("/home/u/rel") + taken) == "/home/u/rel"
    assert answer(taken) == "/w"


def test_a_directory_with_a_newline_is_answered_whole(tmp_path: Path) -> None:
    """-w "$D/a<newline>b" with "$D/a" there too: the answer is "$D/a<newline>b", not "$D/a"."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a\nb").mkdir()
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    done = subprocess.run(["/bin/sh", "-s"], input=distsvc.slurm.check_script(
        str(tmp_path / "a\nb"), []), capture_output=True, text=True,
        env={"PATH": f"{srun.parent}:/usr/bin:/bin"})
    assert distsvc.slurm.check_answer(CLUSTER, "there", "x", [], 0, done.stdout) == \
        f"{tmp_path}/a\nb"


@pytest.mark.parametrize("first", [
    "Welcome to the cluster!\n",  # a login rc file that prints
    "distsvc-directory=/w\n",  # not ours: ours is hex
    "distsvc-directory=zz\n",
])
def test_an_answer_that_is_not_ours_first_is_255(first: str) -> None:
    with pytest.raises(distsvc.errors.CannotRun) as raised:
        distsvc.slurm.check_answer(CLUSTER, "its login node login1", "/w", [], 0,
                                   first + at("/w") + "distsvc-test=0\n")
    assert not isinstance(raised.value, distsvc.slurm.ClusterCannot)
    assert "printed" in raised.value.message and "\n" not in raised.value.message


def test_an_answered_directory_that_is_not_absolute_is_255() -> None:
    with pytest.raises(distsvc.errors.CannotRun, match="not an absolute path"):
        distsvc.slurm.check_answer(CLUSTER, "there", "/w", [], 0,
                                   at("w") + "distsvc-test=0\n")


def test_a_relative_directory_is_the_one_there(tmp_path: Path) -> None:
    (tmp_path / "rel").mkdir()
    script = distsvc.slurm.check_script("rel", [])
    done = subprocess.run(["/bin/sh", "-s"], input=script, capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.stdout.splitlines()[0] + "\n" == at(f"{tmp_path}/rel")


def test_a_directory_the_cluster_lacks() -> None:
    with pytest.raises(distsvc.slurm.ClusterCannot) as raised:
        distsvc.slurm.check_answer(CLUSTER, "its login node login1", "/w", [], 0,
                                   "distsvc-no-directory\n")
    assert raised.value.exit_status == 4
    assert raised.value.message == (
        "cluster c1: /w: no such directory on its login node login1 (the cluster does not "
        "share it); choose one it has with -w/--workdir DIR")


def test_a_refusal_keeps_slurms_reason() -> None:
    with pytest.raises(distsvc.slurm.ClusterCannot) as raised:
        answer("allocation failure: Requested time limit is invalid (missing or exceeds some "
               "limit)\ndistsvc-test=1\n")
    assert "Requested time limit is invalid" in raised.value.message
    assert "--time=00:05:00" in raised.value.message


def test_an_account_refusal_points_at_the_account() -> None:
    with pytest.raises(distsvc.slurm.ClusterCannot) as raised:
        answer("allocation failure: Invalid account or account/partition combination "
               "specified\ndistsvc-test=1\n")
    assert "check `account` of cluster c1" in raised.value.message


@pytest.mark.parametrize("said", [
    "srun: error: Unable to allocate resources: Unable to contact slurm controller "
    "(connect failure)",
    "srun: error: Socket timed out on send/recv operation",
])
def test_a_controller_that_does_not_answer_is_255(said: str) -> None:
    with pytest.raises(distsvc.errors.CannotRun) as raised:
        answer(f"{said}\ndistsvc-test=1\n")
    assert not isinstance(raised.value, distsvc.slurm.ClusterCannot)
    assert raised.value.message.startswith("cluster c1: Slurm's controller does not answer (")


def test_no_srun_or_no_answer_is_255() -> None:
    with pytest.raises(distsvc.errors.CannotRun, match="srun is not installed"):
        answer("distsvc-no-srun\n")
    with pytest.raises(distsvc.errors.CannotRun, match="exit status 127"):
        distsvc.slurm.check_answer(CLUSTER, "there", "/w", [], 127, "sh: 1: oops\n")


def test_tasks_are_refused_before_anything_runs() -> None:
    with pytest.raises(distsvc.slurm.ClusterCannot, match="--tasks"):
        distsvc.slurm.options(HERE, job_limits.Limits(tasks=3))


def test_job_signals_go_to_the_tasks_through_scancel() -> None:
    script = distsvc.slurm.signal_script("ab12", "TERM")
    # Bounded: a controller that does not answer leaves the rest to srun's SIGTERM.
    assert script == ("timeout 5 scancel --quiet --signal=TERM --name=distsvc-run-ab12 "
                      '--user="$(id -un)" >/dev/null 2>&1')
    with pytest.raises(ValueError):
        distsvc.slurm.signal_argv("ab12", "TERM; rm -rf ~")


def test_kill_command_hands_the_signal_on_first_then_ends_what_is_left() -> None:
    import distsvc.remote

    plain = distsvc.remote.kill_command("ab12", "TERM")
    assert 'ds_end "$w" TERM KILL' in plain and "scancel" not in plain
    instead = distsvc.remote.kill_command("ab12", "TERM", "scancel x")
    # The tree gets nothing first (signal 0: a KILL_GRACE wait), then SIGTERM and SIGKILL.
    assert '[ -n "$w" ] && { scancel x' in instead and 'ds_end "$w" 0 TERM KILL' in instead
    assert instead.index("scancel x") < instead.index('ds_end "$w" 0')


def test_a_check_that_times_out_here_leaves_no_child_behind() -> None:
    """The local runner ends the script's whole group (srun --test-only waiting on a
    controller that does not answer is the script's child)."""
    import distsvc.actions.cluster

    run = distsvc.actions.cluster.runner(HERE, distsvc.config.Config(source="test"), None)
    marker = f"{os.getpid()}.4242"
    with pytest.raises(TimeoutError):
        run(f"sleep {marker} & wait", 0.5)

    def sleeping() -> bool:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes() == f"sleep\0{marker}\0".encode():
                    return True
            except OSError:
                pass
        return False
    assert not sleeping()


@pytest.mark.parametrize("dropped", [EOFError(), OSError("Socket is closed")])
def test_a_connection_dropped_during_the_check_is_one_line(dropped: Exception) -> None:
    import distsvc.actions.cluster_run

    def run(script: str, timeout: float) -> tuple[int, bytes]:
        raise dropped
    with pytest.raises(distsvc.errors.CannotRun) as raised:
        distsvc.actions.cluster_run.check(CLUSTER, run, "/w", [])
    assert raised.value.exit_status == 255 and "\n" not in raised.value.message
    assert raised.value.message.startswith(
        "cluster c1: the connection to its login node login1 failed during the check (")


def test_a_signal_during_the_check_ends_it_and_kills_its_srun_there() -> None:
    import threading

    import distsvc.actions.cluster_run
    import distsvc.actions.events

    asked: list[str] = []
    release = threading.Event()

    def run(script: str, timeout: float) -> tuple[int, bytes]:
        asked.append(script)
        if len(asked) == 1:  # the check: a controller that does not answer
            release.wait(30)
            return 0, b""
        release.set()  # the kill
        return 0, b""
    events = distsvc.actions.events.EventQueue()
    try:
        events.add(2)
        assert distsvc.actions.cluster_run.check(CLUSTER, run, "/w", [], events) is None
    finally:
        events.close_pipe()
    token = asked[0].split(distsvc.slurm.CHECK_MARK)[1].split()[0].strip("'")
    assert asked[1] == distsvc.slurm.check_kill_script(token)
    assert f"{distsvc.slurm.CHECK_MARK}{token}" in asked[1]


def test_a_daemon_older_than_clusters_leaves_the_command_to_the_client(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its refusal of a cluster `run` (sent without hosts) is protocol.NO_HOSTS: nothing ran,
    so the command runs in-process, on the login node, as without a daemon."""
    import distsvc.actions.client
    import distsvc.actions.cluster_run
    import distsvc.protocol

    def old_daemon(*args: object, **kw: object) -> int:  # its answer, as it sends it
        distsvc.actions.client.answer_or_raise(distsvc.protocol.error(
            distsvc.protocol.NO_HOSTS, 255))
        raise AssertionError("answer_or_raise raises")
    ran: list[str] = []
    monkeypatch.setattr(distsvc.actions.client, "run", old_daemon)
    monkeypatch.setattr(distsvc.actions.cluster_run, "on_login_node",
                        lambda *args, **kw: ran.append("in-process") or 0)
    config = distsvc.config.Config(source="test", clusters=(CLUSTER,))
    environ = {"HOME": "/nonexistent", "DISTSVC_DAEMON": "auto", "PWD": "/"}
    assert distsvc.actions.cluster_run.run(
        ["true"], distsvc.actions.run.Options(), CLUSTER, job_limits.Limits(), config,
        environ) == 0
    assert ran == ["in-process"]
    # A refusal of the daemon's own stays one.
    def refusing(*args: object, **kw: object) -> int:
        raise distsvc.errors.CannotRun("cluster c1: login node login1: refused")
    monkeypatch.setattr(distsvc.actions.client, "run", refusing)
    with pytest.raises(distsvc.errors.CannotRun):
        distsvc.actions.cluster_run.run(["true"], distsvc.actions.run.Options(), CLUSTER,
                                        job_limits.Limits(), config, environ)
    assert ran == ["in-process"]


def test_knows_no_clusters_is_only_that_refusal() -> None:
    import distsvc.actions.client
    import distsvc.protocol

    assert distsvc.actions.client.knows_no_clusters(
        distsvc.errors.DistsvcError(distsvc.protocol.NO_HOSTS))
    assert not distsvc.actions.client.knows_no_clusters(
        distsvc.errors.CannotRun(distsvc.protocol.NO_HOSTS))
    assert not distsvc.actions.client.knows_no_clusters(
        distsvc.errors.DistsvcError("cluster c1 refused it: x"))
