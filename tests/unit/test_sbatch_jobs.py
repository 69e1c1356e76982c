"""jobs/sbatch.py's pure pieces: the batch script (run by a real /bin/sh), the start's answer,
and a job's end and figures from what a look saw (scontrol's line, sacct's rows)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import distsvc.config
import distsvc.jobs.limits
import distsvc.jobs.record
import distsvc.jobs.remote
import distsvc.jobs.sbatch as sbatch
import distsvc.slurm

CLUSTER = distsvc.config.Cluster(name="hpc", partition="debug")
ORIGIN = "0123abcd" * 2


def job(**fields: object) -> distsvc.jobs.record.Job:
    values: dict[str, object] = dict(
        id="7", name=None, argv=["sh", "-c", "echo hi"], cwd="/", env_names=[],
        limits=distsvc.jobs.limits.Limits(), not_enforced={}, isolation=[],
        placement={"kind": "slurm", "cluster": "hpc", "slurm_id": "42",
                   "slurm_name": f"distsvc-{ORIGIN}-7.1", "dir": "/home/u/out/x/7.1"},
        state="running", created=1000.0, started=1000.0, target="cluster",
        target_host="hpc")
    values.update(fields)
    return distsvc.jobs.record.Job(**values)  # type: ignore[arg-type]


def look(**state: str) -> distsvc.jobs.remote.Look:
    return distsvc.jobs.remote.Look({"slurm_id": "42", **state}, {}, {})


def scontrol(state: str, exit_code: str = "0:0", reason: str = "None") -> str:
    return (f"JobId=42 JobName=distsvc-{ORIGIN}-7.1 UserId=u(1000) JobState={state} "
            f"Reason={reason} Dependency=(null) ExitCode={exit_code} RunTime=00:00:03 "
            "NodeList=node1 Command=/home/u/out/x/7.1/batch")


def test_the_job_name_carries_origin_and_id() -> None:
    assert sbatch.job_name(ORIGIN, job()) == f"distsvc-{ORIGIN}-7.1"
    with pytest.raises(ValueError):
        sbatch.job_name("../x", job())


def test_the_output_directory_is_relative_to_the_home_unless_absolute() -> None:
    assert "ds_root=\"$HOME\"/'.local/state/distsvc/slurm'/" in sbatch.preamble(
        distsvc.config.Cluster(name="c"), ORIGIN)
    assert f"ds_root='/scratch/me'/{ORIGIN}" in sbatch.preamble(
        distsvc.config.Cluster(name="c", output="/scratch/me/"), ORIGIN)


def test_slurms_own_variables_are_not_carried() -> None:
    assert sbatch.env_for_cluster({"SLURM_JOB_ID": "3", "A": "1"}) == {"A": "1"}


def _run_batch(tmp_path: Path, cwd: str) -> tuple[int, str]:
    d = tmp_path / "d"
    d.mkdir()
    (d / "env").write_text(distsvc.jobs.remote.env_script({"GREETING": "hello there"}))
    (d / "batch").write_text(sbatch.batch_script(job(cwd=cwd, argv=[
        "sh", "-c", 'echo "$GREETING from $(pwd)"'])))
    done = subprocess.run(["/bin/sh", str(d / "batch"), str(d)], capture_output=True,
                          text=True, cwd="/", check=False)
    return done.returncode, done.stdout + done.stderr


def test_the_batch_script_runs_the_command_in_its_directory(tmp_path: Path) -> None:
    code, out = _run_batch(tmp_path, str(tmp_path))
    assert (code, out) == (0, f"hello there from {tmp_path}\n")
    assert (tmp_path / "d" / "started").exists()


def test_the_batch_script_never_runs_elsewhere(tmp_path: Path) -> None:
    code, out = _run_batch(tmp_path, str(tmp_path / "missing"))
    assert code == sbatch.NODIR_STATUS and "no such directory on node" in out
    assert (tmp_path / "d" / "nodir").exists() and not (tmp_path / "d" / "started").exists()
    end = sbatch.ended(job(), look(nodir="yes", scontrol=scontrol("FAILED", "200:0")))
    assert end is not None and end[0] == "failed" and "-w" in (end[3] or "")


def test_the_start_answer() -> None:
    assert sbatch.read_start(0, b"program=/bin/sh\ndir=/h/x/7.1\nslurm_id=42\nstarted=yes\n",
                             CLUSTER, [])["slurm_id"] == "42"
    out = (b"dir=/h/x/7.1\n" + sbatch.STDERR_MARK.encode() + b"\nsbatch: error: Batch job "
           b"submission failed: Invalid partition name specified\n")
    with pytest.raises(distsvc.slurm.ClusterCannot) as refused:
        sbatch.read_start(sbatch.EXIT_REFUSED, out, CLUSTER, ["--partition=debug"])
    assert refused.value.message.startswith(
        "cluster hpc refused it: Invalid partition name specified; check `partition`")
    with pytest.raises(distsvc.jobs.remote.StartRefused) as missing:
        sbatch.read_start(127, b"error=notfound PATH=/usr/bin\n", CLUSTER, [])
    assert missing.value.exit_status == 127 and "cluster hpc" in missing.value.message


@pytest.mark.parametrize(("state", "exit_code", "end"), [
    ("COMPLETED", "0:0", ("exited", 0, None, None)),
    ("FAILED", "3:0", ("exited", 3, None, "Slurm: FAILED")),
    ("CANCELLED", "0:15", ("killed", None, 15, "Slurm: CANCELLED")),
    ("TIMEOUT", "0:0", ("timeout", None, None, "Slurm: TIMEOUT")),
    ("OUT_OF_MEMORY", "0:125", ("oom", None, None, "Slurm: OUT_OF_MEMORY")),
    ("NODE_FAIL", "0:0", ("failed", None, None, "Slurm: NODE_FAIL")),
])
def test_slurms_end_states(state: str, exit_code: str,
                           end: tuple[str, int | None, int | None, str | None]) -> None:
    assert sbatch.ended(job(), look(scontrol=scontrol(state, exit_code))) == end


def test_not_over_while_pending_or_running() -> None:
    for state in ("PENDING", "RUNNING", "COMPLETING"):
        assert sbatch.ended(job(), look(scontrol=scontrol(state))) is None
    assert sbatch.ended(job(), look()) is None  # nothing seen: looked at again


def test_a_dependency_never_satisfied_is_dependency_failed() -> None:
    end = sbatch.ended(job(), look(scontrol=scontrol("PENDING",
                                                     reason="DependencyNeverSatisfied")))
    assert end is not None and end[0] == "dependency-failed"
    assert "scancel 42" in sbatch.collect_script(CLUSTER, ORIGIN, job(), end)
    assert sbatch.collect_script(CLUSTER, ORIGIN, job(), ("exited", 0, None, None)) == ""


def _sacct(*rows: str) -> dict[str, str]:
    return {f"sacct_{i}": row for i, row in enumerate(rows, 1)}


def test_sacct_after_slurmctld_forgot_it_and_older_jobs_of_the_same_id() -> None:
    name = f"distsvc-{ORIGIN}-7.1"
    state = _sacct("42|allocation|COMPLETED|0:0|00:00:01|00:00.010|",   # another, earlier 42
                   "42.0|true|COMPLETED|0:0|00:00:01|00:00.010|9000K",
                   f"42|{name}|FAILED|3:0|00:00:04|00:01.500|",
                   "42.batch|batch|FAILED|3:0|00:00:04|00:01.500|1200K",
                   "42.0|python3|COMPLETED|0:0|00:00:02|00:01.000|61000K")
    seen = job()
    assert sbatch.ended(seen, look(scontrol="", **state)) == ("exited", 3, None, "Slurm: FAILED")
    assert sbatch.figures(seen, look(scontrol="", **state))
    assert seen.memory_peak == 61000 << 10 and seen.cpu_ns == 1_500_000_000
    assert seen.placement["accounting"] == "sacct" and seen.placement["elapsed"] == "00:00:04"


def test_without_accounting_a_forgotten_job_is_unknown() -> None:
    state = {"scontrol": "", "sacct_1": "Slurm accounting storage is disabled"}
    seen = job()
    end = sbatch.ended(seen, look(**state))
    assert end is not None and end[0] == "unknown" and "disabled" in (end[3] or "")
    sbatch.figures(seen, look(**state))
    assert seen.placement["accounting"].startswith("none: Slurm accounting storage is disabled")
    # A passing failure of sacct while slurmctld knows the job is not an end.
    assert sbatch.ended(job(), look(scontrol="", sacct_1="sacct: error: timeout")) is None


def test_figures_say_slurms_state_reason_and_node() -> None:
    seen = job()
    assert sbatch.figures(seen, look(scontrol=scontrol("PENDING", reason="Dependency")))
    assert distsvc.jobs.record.describe_state(seen) == "pending (Dependency)"
    assert sbatch.figures(seen, look(scontrol=scontrol("RUNNING")))
    assert distsvc.jobs.record.describe_state(seen) == "running on node1"
    assert not sbatch.figures(seen, look(scontrol=scontrol("RUNNING")))  # nothing new
    later = scontrol("RUNNING").replace("RunTime=00:00:03", "RunTime=00:00:04")
    assert not sbatch.figures(seen, look(scontrol=later))  # only the run time: no write
    assert seen.placement["run_time"] == "00:00:04"


def test_stop_is_scancel_of_the_whole_job() -> None:
    script = sbatch.stop_script(CLUSTER, ORIGIN, job(), "TERM", 10)
    assert 'scancel "$ds_id"' in script and "--signal" not in script
    script = sbatch.stop_script(CLUSTER, ORIGIN, job(), "INT", 2)
    assert "scancel --full --signal=INT" in script
    with pytest.raises(ValueError):
        sbatch.stop_script(CLUSTER, ORIGIN, job(), "INT; rm", 2)


def test_killed_beyond_its_memory_request_is_out_of_memory() -> None:
    """Slurm 22.05's OverMemoryKill: FAILED by signal 9, slurmstepd's line in stderr."""
    failed = scontrol("FAILED", "0:9", reason="JobLaunchFailure")
    end = sbatch.ended(job(), look(scontrol=failed, overmem="yes"))
    assert end is not None and end[0] == "oom" and "OverMemoryKill" in (end[3] or "")
    assert sbatch.ended(job(), look(scontrol=failed, started="yes")) == (
        "failed", None, None, "Slurm could not launch it (JobLaunchFailure, ExitCode 0:9)")
    # A plain SIGKILL stays a kill.
    assert sbatch.ended(job(), look(scontrol=scontrol("FAILED", "0:9"))) == (
        "killed", None, 9, "Slurm: FAILED")


def test_a_launch_failure_is_failed_not_a_signal() -> None:
    """FAILED 0:53 JobLaunchFailure (`--output` in a directory the node lacks) is not
    "killed by signal 53": failed, saying where the output goes and which setting that is."""
    failed = scontrol("FAILED", "0:53", reason="JobLaunchFailure")
    end = sbatch.ended(job(), look(scontrol=failed))
    assert end == ("failed", None, None, "Slurm could not launch it on node1 (JobLaunchFailure"
                   ", ExitCode 0:53): its output directory /home/u/out must be on the nodes "
                   "(the `output` setting of cluster hpc); it did not run")
    # From accounting alone (no reason there): a "signal" no process sends is the same.
    rows = _sacct(f"42|distsvc-{ORIGIN}-7.1|FAILED|0:53|00:00:00|00:00:00|")
    end = sbatch.ended(job(), look(scontrol="", **rows))
    assert end is not None and end[0] == "failed" and "could not launch" in (end[3] or "")
    assert distsvc.slurm.ended("FAILED", "0:11") == ("killed", None, 11, "Slurm: FAILED")


def test_a_pending_reason_with_spaces_is_read_whole() -> None:
    line = sbatch.QUEUE_FORMAT.replace("%i", "42").replace("%T", "PENDING").replace(
        "%N", "").replace("%M", "0:00").replace(
        "%r", "ReqNodeNotAvail, UnavailableNodes:node[1-2]")
    seen = job()
    sbatch.figures(seen, look(scontrol=line))
    assert distsvc.jobs.record.describe_state(seen) == (
        "pending (ReqNodeNotAvail, UnavailableNodes:node[1-2])")
    assert sbatch.OVER_MEMORY in sbatch.monitor_script(CLUSTER, ORIGIN, [(job(), {})])


def test_every_script_is_valid_posix_shell() -> None:
    """dash (Debian's /bin/sh) parses each script whole (`sh -n`): the runner wraps them in
    one brace group, so a syntax error would run nothing, silently."""
    started = job(placement={"kind": "slurm", "cluster": "hpc"})  # no directory known yet
    scripts = [
        sbatch.start_script(CLUSTER, ORIGIN, started, {"A": "x\ny"}, ["--mem=10M"]),
        sbatch.monitor_script(CLUSTER, ORIGIN, [(job(), {"stdout": 5}), (started, {})]),
        sbatch.stop_script(CLUSTER, ORIGIN, job(), "INT", 1),
        sbatch.collect_script(CLUSTER, ORIGIN, job(), ("dependency-failed", None, None, None)),
    ]
    for script in scripts:
        done = subprocess.run(["/bin/sh", "-n"], input="{\n" + script + "\n}\n", text=True,
                              capture_output=True, check=False)
        assert done.returncode == 0, (done.stderr, script)


def test_a_start_whose_answer_was_lost() -> None:
    """No Slurm ID there: looked up by name; the directory learnt; unknown after a while."""
    lost = job(placement={"kind": "slurm", "cluster": "hpc",
                          "slurm_name": f"distsvc-{ORIGIN}-7.1"}, started=1000.0)
    script = sbatch.monitor_script(CLUSTER, ORIGIN, [(lost, {})])
    assert f"-t all -n distsvc-{ORIGIN}-7.1" in script and 'echo "dir=' in script
    seen = distsvc.jobs.remote.Look({"slurm_id": "", "dir": "/home/u/out/x/7.1"}, {}, {})
    assert sbatch.ended(lost, seen, now=1010.0) is None
    end = sbatch.ended(lost, seen, now=1000.0 + sbatch.LOST_SUBMISSION + 1)
    assert end is not None and end[0] == "unknown" and "sacct --name" in (end[3] or "")
    sbatch.figures(lost, seen)
    assert lost.placement["dir"] == "/home/u/out/x/7.1"
    found = distsvc.jobs.remote.Look({"slurm_id": "42", "scontrol": scontrol("RUNNING")}, {}, {})
    assert sbatch.ended(lost, found, now=5000.0) is None and sbatch.figures(lost, found)
    assert lost.placement["slurm_id"] == "42"


FAKE_SLURM = {
    # Each logs its arguments and answers what the test put in its environment.
    "squeue": 'echo "squeue $*" >> "$CALLS"; [ -z "$SQUEUE_ERR" ] || '
              '{ echo "$SQUEUE_ERR" >&2; exit 1; }; case "$*" in *" -n "*) '
              'printf "%s" "$SQUEUE_NAME";; *) printf "%s" "$SQUEUE_OUT";; esac',
    "scontrol": 'echo "scontrol $*" >> "$CALLS"; printf "%s" "$SCONTROL_OUT"',
    "sacct": 'echo "sacct $*" >> "$CALLS"; case "$*" in *--name*) printf "%s" "$SACCT_NAME";; '
             '*) printf "%s" "$SACCT_OUT";; esac',
    "scancel": 'echo "scancel $*" >> "$CALLS"; [ -z "$SCANCEL_ERR" ] || '
               '{ echo "$SCANCEL_ERR" >&2; exit 1; }',
}


def _fake_cluster(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A home with the attempt's directory and Slurm's commands as FAKE_SLURM says."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKE_SLURM.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    d = tmp_path / "home" / ".local/state/distsvc/slurm" / ORIGIN / "7.1"
    d.mkdir(parents=True)
    for stream in ("stdout", "stderr"):
        (d / stream).touch()
    env = {"HOME": str(tmp_path / "home"), "PATH": f"{bin_dir}:/usr/bin:/bin",
           "CALLS": str(tmp_path / "calls")}
    return env, d


def _shell(script: str, env: dict[str, str]) -> tuple[int, bytes]:
    done = subprocess.run(["/bin/sh", "-s"], input=("{\n" + script + "\n}\n").encode(),
                          env=env, capture_output=True, check=False)
    return done.returncode, done.stdout


def _look(seen: distsvc.jobs.record.Job, env: dict[str, str]) -> distsvc.jobs.remote.Look:
    _, out = _shell(sbatch.monitor_script(CLUSTER, ORIGIN, [(seen, {})], now=2000.0), env)
    return distsvc.jobs.remote.read_monitor(out)[seen.id]


def test_a_lost_answers_job_is_found_by_name_after_it_ended(tmp_path: Path) -> None:
    """The start's answer was lost and the job ended before the first look: squeue shows
    the user's ended jobs too (-t all), sacct --name after slurmctld forgot it; the ID found
    is kept there and in the record, and the job ends as Slurm says, not "unknown"."""
    env, d = _fake_cluster(tmp_path)
    name = f"distsvc-{ORIGIN}-7.1"
    lost = job(placement={"kind": "slurm", "cluster": "hpc", "slurm_name": name},
               started=1000.0)
    rows = f"42|{name}|FAILED|3:0|00:00:04|00:01.500|\n"
    seen = _look(lost, {**env, "SACCT_NAME": "42\n", "SACCT_OUT": rows})
    calls = (tmp_path / "calls").read_text()
    assert f"-t all -n {name}" in calls and f"--name {name}" in calls
    assert seen.state["slurm_id"] == "42" and (d / "slurm_id").read_text() == "42\n"
    end = sbatch.ended(lost, seen, now=1000.0 + sbatch.LOST_SUBMISSION + 1)
    assert end == ("exited", 3, None, "Slurm: FAILED")
    sbatch.figures(lost, seen)
    assert lost.placement["slurm_id"] == "42"
    # The next look uses the record's ID: no lookup by name, and still not "unknown".
    (tmp_path / "calls").write_text("")
    again = _look(lost, {**env, "SACCT_OUT": rows})
    assert "--name" not in (tmp_path / "calls").read_text()
    assert sbatch.ended(lost, again, now=5000.0) == ("exited", 3, None, "Slurm: FAILED")


def test_slurmctld_down_is_not_the_job_gone(tmp_path: Path) -> None:
    """squeue failing: no per-job call, one line of what it said; the job is not ended."""
    env, _ = _fake_cluster(tmp_path)
    said = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"
    code, out = _shell(sbatch.monitor_script(CLUSTER, ORIGIN, [(job(), {})], now=2000.0),
                       {**env, "SQUEUE_ERR": said})
    assert code == 0 and out.rstrip().endswith(b"monitor=done")
    assert sbatch.controller_down(out) == said
    assert distsvc.jobs.remote.read_monitor(out) == {}
    assert [c.split()[0] for c in (tmp_path / "calls").read_text().splitlines()] == ["squeue"]
    _, out = _shell(sbatch.monitor_script(CLUSTER, ORIGIN, [(job(), {})], now=2000.0), env)
    assert sbatch.controller_down(out) is None and job().id in distsvc.jobs.remote.read_monitor(
        out)


@pytest.mark.parametrize("signal_name", ["TERM", "INT"])
def test_stop_says_yes_only_when_scancel_did(tmp_path: Path, signal_name: str) -> None:
    env, _ = _fake_cluster(tmp_path)
    script = sbatch.stop_script(CLUSTER, ORIGIN, job(), signal_name, 0.1)
    for over in ("scancel: error: Kill job error on job id 42: Invalid job id specified",
                 "scancel: error: Kill job error on job id 42: Job/step already completing "
                 "or completed"):
        code, out = _shell(script, {**env, "SCANCEL_ERR": over})
        assert (code, out) == (0, b"stopped=yes\n")
    down = "scancel: error: Kill job error on job id 42: Unable to contact slurm controller"
    code, out = _shell(script, {**env, "SCANCEL_ERR": down})
    assert code == sbatch.EXIT_SCANCEL and out == f"error=scancel: {down}\n".encode()
    assert _shell(script, env) == (0, b"stopped=yes\n")


@pytest.mark.parametrize(("home", "output"), [("ho%me", "ho%%me"), ("ho\\me%", "ho\\me%")])
def test_a_home_sbatch_would_read_as_a_pattern_is_escaped(tmp_path: Path, home: str,
                                                          output: str) -> None:
    """sbatch expands % in --output (%% is one %); a backslash turns its patterns off."""
    env, _ = _fake_cluster(tmp_path)
    (tmp_path / home).mkdir()
    (tmp_path / "bin" / "sbatch").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$CALLS"\n'
                                             'echo 43\n')
    (tmp_path / "bin" / "sbatch").chmod(0o755)
    fresh = job(placement={"kind": "slurm", "cluster": "hpc"})
    code, out = _shell(sbatch.start_script(CLUSTER, ORIGIN, fresh, {}, []),
                       {**env, "HOME": str(tmp_path / home)})
    assert code == 0 and b"slurm_id=43" in out, out
    expected = f"--output={tmp_path}/{output}/.local/state/distsvc/slurm/{ORIGIN}/7.1/stdout"
    assert expected in (tmp_path / "calls").read_text().splitlines()


def test_a_pending_jobs_output_is_not_fetched(tmp_path: Path) -> None:
    """A pending job has written nothing: its look asks no file (hundreds may wait)."""
    env, d = _fake_cluster(tmp_path)
    (d / "stdout").write_text("x")
    line = "JobId=42 JobState={} NodeList= RunTime=0:00 QueueReason=Priority"
    pending = _look(job(placement={**job().placement, "dir": str(d)}),
                    {**env, "SQUEUE_OUT": line.format("PENDING")})
    assert pending.state["scontrol"].startswith("JobId=42 JobState=PENDING")
    assert pending.sizes == {} and pending.data == {}
    running = _look(job(placement={**job().placement, "dir": str(d)}),
                    {**env, "SQUEUE_OUT": line.format("RUNNING")})
    assert running.sizes["stdout"] == 1 and running.data["stdout"] == (0, b"x")


def test_a_wait_between_pending_looks_ends_when_the_clusters_jobs_change() -> None:
    import distsvc.daemon.remote_watch as remote_watch

    calls = []

    class Book:
        def running_on(self, host: str) -> list[distsvc.jobs.record.Job]:
            calls.append(host)
            return [job()] if len(calls) < 2 else [job(), job(id="8")]  # one submitted

    remote_watch._wait_pending(Book(), "hpc", {"7"})  # type: ignore[arg-type]
    assert calls == ["hpc", "hpc"]


def test_status_looks_up_accounting_off_its_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """`status` answers at once; one lookup per job at a time runs on a thread of its own."""
    import threading

    import distsvc.daemon.remote_watch as remote_watch

    release, calls = threading.Event(), []

    def refresh(book: object, seen: distsvc.jobs.record.Job) -> None:
        calls.append(seen.id)
        release.wait(10)

    monkeypatch.setattr(remote_watch, "refresh_accounting", refresh)

    class Book:
        def __init__(self) -> None:
            self.changed = threading.Condition()
            self.refreshing: set[str] = set()

    book, ended = Book(), job(state="exited", exit_code=0, ended=1e12)
    remote_watch.refresh_accounting_soon(book, ended)  # type: ignore[arg-type]
    remote_watch.refresh_accounting_soon(book, ended)  # type: ignore[arg-type]  # one at a time
    assert book.refreshing == {"7"}  # returned while the lookup still runs
    release.set()
    for thread in threading.enumerate():
        if thread.name == "accounting-7":
            thread.join(10)
    assert calls == ["7"] and book.refreshing == set()


def test_accountings_lagging_state_does_not_override_slurmctlds() -> None:
    """Just after a NODE_FAIL, slurmdbd may still have the job RUNNING: scontrol's state
    stands (status showed "RUNNING" for a job that had ended)."""
    seen = job(state="failed")
    lagging = _sacct(f"42|distsvc-{ORIGIN}-7.1|RUNNING|0:0|00:00:01|00:00:00|")
    sbatch.figures(seen, look(scontrol=scontrol("NODE_FAIL", reason="NodeDown"), **lagging))
    assert seen.placement["slurm_state"] == "NODE_FAIL"
    sbatch.figures(seen, look(scontrol="", **_sacct(
        f"42|distsvc-{ORIGIN}-7.1|NODE_FAIL|0:0|00:00:01|00:00:00|")))
    assert seen.placement["slurm_state"] == "NODE_FAIL"
