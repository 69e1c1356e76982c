"""Jobs on a Slurm cluster: the "slurm" placement, a job handed to `sbatch` at once.

Like jobs/remote.py, every operation is a POSIX shell script on the stdin of `/bin/sh -s`,
here on the cluster's shell (this machine's, or its login node's over the daemon's pool; see
actions/cluster.py), answering with `key=value` lines. Slurm's queue is the job's queue: the
job is submitted when its turn comes in ours (its `--after` jobs outside the cluster
succeeded; those on the same cluster become `--dependency=afterok:ID`), and takes no slot.

On the cluster each attempt has a directory of its own under the cluster's `output`
(relative to the home there, which the nodes share), 0700, its files 0600:

    OUTPUT/ORIGIN/ID.ATTEMPT/   env  batch  stdout  stderr  slurm_id  [started]  [nodir]

`batch` is the batch script: it reads `env` (the job's environment, as remote jobs have it),
changes to the working directory and fails (status 200, `nodir`, one line on stderr) when
that is not there (sbatch's and srun's `--chdir` silently fall back to /tmp: a command must
never run elsewhere), then execs the command. Slurm writes stdout and stderr (append mode:
a file never shrinks, so the mirror stays exact); the watcher mirrors them as for a job on a
host (jobs/remote.fetch_function and read_monitor's framing) and reads the job's state from
`scontrol show job -o` (while slurmctld keeps it: MinJobAge after the end) and from `sacct`
once it ended (the state after that, and the accounting: Elapsed, TotalCPU, MaxRSS).
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Mapping, Sequence

import distsvc.config
import distsvc.errors
import distsvc.jobs.record
import distsvc.jobs.remote
import distsvc.slurm

Look = distsvc.jobs.remote.Look
Job = distsvc.jobs.record.Job
EXIT_NO_SBATCH = 13
EXIT_REFUSED = 14
NODIR_STATUS = 200        # the batch script's status when the directory is not on the node
STDERR_MARK = "sbatch-stderr-follows"
ACCOUNTING_FIELDS = "JobID,JobName,State,ExitCode,Elapsed,TotalCPU,MaxRSS"
OVER_MEMORY = "slurmstepd.*: Exceeded job memory limit"
"""What slurmstepd writes in the job's stderr when JobAcctGatherParams=OverMemoryKill kills a
step beyond its memory request: Slurm 22.05 then records FAILED (JobLaunchFailure) with
signal 9, not OUT_OF_MEMORY (which only its cgroup plugin's OOM events give)."""
ACCOUNTING_MARGIN = 3600  # seconds before a job's submission sacct looks from (IDs recur)
EXIT_SCANCEL = 15         # the stop script's status when scancel failed (its line follows)
# What scancel says of a job that is over or ending: the stop is done, not failed.
_DONE_ALREADY = "*'Invalid job id'*|*'already completing'*|*'Job/step already completing'*"
# Slurm states in which a job is not over (scontrol's JobState=).
_ACTIVE = "|".join(f"*JobState={state}*" for state in distsvc.slurm.ACTIVE)


def _q(text: str) -> str:
    return shlex.quote(text)


def job_name(origin: str, job: Job) -> str:
    """The attempt's name in Slurm: JOB_PREFIX + ORIGIN-ID.ATTEMPT (squeue, sacct show it;
    a look by name is the user's jobs only, so neither another user's job nor an earlier
    attempt is ever followed or cancelled)."""
    distsvc.jobs.remote.unit_name(origin, job.id, job.attempt)  # checks origin and ID
    return f"{distsvc.slurm.JOB_PREFIX}{origin}-{job.id}.{int(job.attempt)}"


def preamble(cluster: distsvc.config.Cluster, origin: str) -> str:
    """Every script starts with this: what it makes is the user's alone; `ds_root` is this
    origin's directory under the cluster's `output` (relative to the home there)."""
    distsvc.jobs.remote.unit_name(origin, "1", 1)  # checks the origin
    output = cluster.output.rstrip("/") or "."
    base = f"'{output}'" if output.startswith("/") else f"\"$HOME\"/'{output}'"
    return f"umask 077\nds_root={base}/{origin}\n"


def attempt_dir(job: Job) -> str:
    """The attempt's directory as shell: the one the cluster named at the start, or (for a
    start whose answer was lost) where the start script makes it."""
    if job.placement.get("dir"):
        return distsvc.jobs.remote.job_dir(job.placement)
    return f'"$ds_root/{int(job.id)}.{int(job.attempt)}"'


def env_for_cluster(env: Mapping[str, str]) -> dict[str, str]:
    """The carried environment less Slurm's own variables: the job's are Slurm's to set
    (SLURM_JOB_ID...), not those of a client that itself runs inside a Slurm job."""
    return {k: v for k, v in env.items() if not k.startswith("SLURM_")}


def batch_script(job: Job) -> str:
    """The batch script sbatch runs (as `batch DIR`): environment, directory, command."""
    cwd = _q(job.cwd)
    command = " ".join(_q(a) for a in job.argv)
    return f"""#!/bin/sh
D=$1
. "$D/env"
cd -- {cwd} 2>/dev/null || {{
  printf 'distsvc: %s: no such directory on node %s; the command did not run\\n' {cwd} \\
    "$(hostname)" >&2
  : > "$D/nodir"; exit {NODIR_STATUS}; }}
: > "$D/started"
exec {command}
"""


def start_script(cluster: distsvc.config.Cluster, origin: str, job: Job,
                 env: Mapping[str, str], options: Sequence[str]) -> str:
    """Submit attempt `job.attempt` of `job` with `options` (slurm.options, a dependency).

    Before anything is submitted, in the job's own environment and directory there, the
    command is looked up (jobs/remote.check_lines: 127, 126, 4 no directory). An attempt's
    directory that exists already means it may have been submitted before: exit 11, nothing
    done. Prints dir= and slurm_id=, or Slurm's refusal after a STDERR_MARK line (exit 14)."""
    heredoc = distsvc.jobs.remote.heredoc
    name = job_name(origin, job)
    opts = " ".join(_q(o) for o in options)
    return "\n".join([
        preamble(cluster, origin),
        'mkdir -p "$ds_root" || { echo "error=cannot make $ds_root"; exit 10; }',
        f'D={attempt_dir(job)}',
        f"mkdir \"$D\" 2>/dev/null || {{ echo 'error=exists'; "
        f"exit {distsvc.jobs.remote.EXIT_EXISTS}; }}",
        heredoc('"$D/env"', distsvc.jobs.remote.env_script(env_for_cluster(env))),
        heredoc('"$D/batch"', batch_script(job)),
        ': > "$D/stdout"; : > "$D/stderr"',
        distsvc.jobs.remote.check_lines(job),
        f"""\
command -v sbatch >/dev/null 2>&1 || {{ rm -rf "$D"
  echo "error=Slurm's sbatch is not installed there"; exit {EXIT_NO_SBATCH}; }}
# sbatch reads --output as a pattern: a % in the home's path is %% (a \\ there turns the
# patterns off: the path as it is); the config refuses both in `output` itself.
case "$D" in *\\\\*) ds_o=$D;; *) ds_o=$(printf '%s\\n' "$D" | sed 's/%/%%/g');; esac
ds_out=$(sbatch --parsable --job-name={_q(name)} --output="$ds_o/stdout" --error="$ds_o/stderr" \\
  --open-mode=append --no-requeue --chdir={_q(job.cwd)} {opts} "$D/batch" "$D" \
  </dev/null 2>"$D/submit")
if [ $? -ne 0 ]; then echo {STDERR_MARK}; cat "$D/submit"; rm -rf "$D"; exit {EXIT_REFUSED}; fi
ds_id=${{ds_out%%;*}}
echo "$ds_id" > "$D/slurm_id"
echo "slurm_id=$ds_id"
echo "started=yes"
"""])


def read_start(code: int, out: bytes, cluster: distsvc.config.Cluster,
               options: Sequence[str]) -> dict[str, str]:
    """The start's answer: {"dir", "slurm_id", "program"}; StartRefused (127, 126, 4) or
    ClusterCannot (Slurm's refusal, in one line) otherwise."""
    text = out.decode("utf-8", "replace")
    head, mark, stderr = text.partition(STDERR_MARK + "\n")
    values = distsvc.jobs.remote.parse(head.encode())
    if code == 0 and values.get("started") == "yes" and values.get("slurm_id", "").isdigit():
        return values
    if mark:
        raise distsvc.slurm.refusal(cluster, stderr, list(options))
    if code in (4, 126, 127):
        return distsvc.jobs.remote.read_start(code, head.encode(), f"cluster {cluster.name}")
    raise distsvc.slurm.ClusterCannot(
        f"could not submit the job to cluster {cluster.name}: "
        f"{values.get('error') or 'the start script ended with status ' + str(code)}")


# -- watching ----------------------------------------------------------------------------------

QUEUE_FORMAT = "JobId=%i JobState=%T NodeList=%N RunTime=%M QueueReason=%r"
"""squeue's line of a job as scontrol's fields; the reason last, whole (squeue's may hold
spaces: "ReqNodeNotAvail, UnavailableNodes:node[1-2]")."""


def _fields(look: Look) -> dict[str, str]:
    """The job's fields from the look's line: squeue's (QUEUE_FORMAT) or scontrol's."""
    line = look.state.get("scontrol", "")
    fields = distsvc.slurm.parse_fields(line)
    whole = re.search(r" QueueReason=(.*)$", line)
    if whole:
        fields["Reason"] = whole[1].strip()
    return fields


def _since(job: Job, now: float) -> int:
    """Seconds before `now` from which sacct looks for the job (an hour before it started:
    a Slurm ID recurs after a controller's state is lost, and sacct keeps the older jobs')."""
    return max(0, int(now - (job.started or job.created or now))) + ACCOUNTING_MARGIN


def _find_id(d: str, job: Job, origin: str, since: int) -> str:
    """Shell setting $ds_id: the Slurm ID of the record (the start's answer, or one a look
    found), else the one the start kept in the attempt's directory, else the one Slurm has
    for the attempt's name (a start whose answer was lost): the user's jobs in squeue, ended
    ones too while slurmctld keeps them, then sacct where accounting is on. An ID found by
    name is written to the directory's `slurm_id` for the looks to come."""
    known = job.placement.get("slurm_id", "")
    if known.isdigit():
        return f"ds_id={known}"
    name = _q(job_name(origin, job))
    return f"""{{ read -r ds_id < {d}/slurm_id; }} 2>/dev/null || {{
  ds_id=$(squeue -h -u "$(id -un)" -t all -n {name} -o %i 2>/dev/null | head -n 1)
  [ -n "$ds_id" ] || ds_id=$(sacct -n -X -P -u "$(id -un)" -S now-{since} --name {name} \
    -o JobID 2>/dev/null | awk '/^[0-9]+$/' | tail -n 1)
  [ -n "$ds_id" ] && [ -d {d} ] && echo "$ds_id" > {d}/slurm_id
}}"""


def monitor_script(cluster: distsvc.config.Cluster, origin: str,
                   jobs: Sequence[tuple[Job, Mapping[str, int]]],
                   budget: int = distsvc.jobs.remote.LOOK_MAX, now: float = 0.0) -> str:
    """One look at each of `jobs` (with the mirror's sizes): its Slurm ID, scontrol's line
    (`scontrol=`), sacct's lines once it is over (`sacct_N=`; from an hour before its
    submission, `now` being the time here: a Slurm ID recurs after a controller's state is
    lost, and sacct keeps the older jobs'), the markers its batch script left, and each
    stream's bytes past the mirror's (jobs/remote.read_monitor reads it)."""
    parts = [preamble(cluster, origin),
             distsvc.jobs.remote.fetch_function(budget, len(jobs)),
             # The user's unfinished jobs in one call, as scontrol's fields: scontrol itself
             # (a call to slurmctld each) only for a job not among them (over, or forgotten).
             # squeue failing is slurmctld not answering: nothing is learnt of any job (its
             # absence from scontrol would read as gone), so no job is looked at.
             f"""\
ds_queue=$(squeue -h -u "$(id -un)" -o '{QUEUE_FORMAT}' 2>&1; echo "ds_status=$?")
case "${{ds_queue##*ds_status=}}" in
  0) ;;
  *) echo "controller=down: $(printf '%s\n' "$ds_queue" | grep -v '^ds_status=' \
       | head -n 1)"
     echo "monitor=done"; exit 0;;
esac"""]
    for job, sizes in jobs:
        d = attempt_dir(job)
        since = _since(job, now)
        found_dir = "" if job.placement.get("dir") else \
            f'\n[ -d {d} ] && echo "dir=$(cd {d} && pwd -P)"'  # a start's lost answer
        parts.append(f"""\
echo "job {job.id}"
{_find_id(d, job, origin, since)}
echo "slurm_id=$ds_id"
if [ -n "$ds_id" ]; then
  ds_l=$(printf '%s\n' "$ds_queue" | awk -v id="JobId=$ds_id" '$1 == id {{ print; exit }}')
  [ -n "$ds_l" ] || ds_l=$(scontrol show job -o "$ds_id" 2>/dev/null | head -n 1)
  echo "scontrol=$ds_l"
  case "$ds_l" in {_ACTIVE}) ;;
    *) sacct -n -P -S now-{since} -j "$ds_id" -o {ACCOUNTING_FIELDS} 2>&1 \
         | awk '{{print "sacct_" NR "=" $0}}'
       grep -q '{OVER_MEMORY}' {d}/stderr 2>/dev/null && echo "overmem=yes";;
  esac
fi
[ -e {d}/started ] && echo "started=yes"
[ -e {d}/nodir ] && echo "nodir=yes"
[ -d {d} ] || echo "gone=yes"{found_dir}
case "$ds_l" in *JobState=PENDING*) ;; *)  # a pending job has written nothing yet
{distsvc.jobs.remote.fetch_lines(d, sizes)};;
esac
echo end
""")
    parts.append('echo "monitor=done"')
    return "\n".join(parts)


def _accounting(job: Job, look: Look) -> tuple[list[dict[str, str]], str | None]:
    """sacct's rows (JobID, State, ...) of the job and its steps from a look, and what sacct
    said instead of rows (accounting disabled...), if it did. Rows of another job that had
    the same ID (sacct keeps them) are left out: the job's own row carries its name, and its
    steps follow it."""
    rows: list[dict[str, str]] = []
    said = None
    names = ACCOUNTING_FIELDS.split(",")
    ours = False
    slurm_id = look.state.get("slurm_id", "")
    for key in sorted((k for k in look.state if re.fullmatch(r"sacct_\d+", k)),
                      key=lambda k: int(k[6:])):
        values = look.state[key].split("|")
        if len(values) != len(names):
            said = look.state[key].strip() or said
            continue
        row = dict(zip(names, values, strict=True))
        if row["JobID"] == slurm_id:
            ours = row["JobName"] == job.placement.get("slurm_name")
        if ours and row["JobID"].partition(".")[0] == slurm_id:
            rows.append(row)
    return rows, said


LOST_SUBMISSION = 120.0  # seconds after a start whose answer was lost, with no Slurm job


def ended(job: Job, look: Look, now: float | None = None
          ) -> tuple[str, int | None, int | None, str | None] | None:
    """How the job ended (state, exit code, signal, reason), or None while it is not over:
    from scontrol while slurmctld knows it, else from sacct. A start whose answer was lost
    (no Slurm ID kept there) and of whose name Slurm has no job LOST_SUBMISSION seconds
    (`now`) after it is "unknown"."""
    state = look.state
    cluster = job.placement.get("cluster", "?")
    if state.get("nodir") == "yes":
        return ("failed", None, None, f"no such directory on the cluster's node: {job.cwd} "
                "(a cluster runs it where its nodes see the directory: choose one with -w)")
    fields = _fields(look)
    if fields.get("JobState"):
        reason = distsvc.slurm.reason_text(fields)
        if fields["JobState"] == "PENDING" and reason == "DependencyNeverSatisfied":
            return ("dependency-failed", None, None,
                    "Slurm: DependencyNeverSatisfied (a job it was to run after did not "
                    "succeed); cancelled")
        return _slurm_end(job, look, fields["JobState"], fields.get("ExitCode", ""), reason,
                          fields.get("NodeList", ""))
    rows, said = _accounting(job, look)
    top = next((r for r in rows if r["JobID"] == state.get("slurm_id")), None)
    if top is not None:
        return _slurm_end(job, look, top["State"], top["ExitCode"], None,
                          job.placement.get("node", ""))
    if state.get("gone") == "yes" and not state.get("slurm_id"):
        if job.state == "starting":
            return ("failed", None, None, f"its submission to cluster {cluster} was cut short "
                    "before it was made (the daemon stopped?); it did not run")
        return ("unknown", None, None, f"its directory on cluster {cluster} is gone; "
                "its exit status is lost")
    if not state.get("slurm_id") and now is not None and \
            now - (job.started or job.created) > LOST_SUBMISSION:
        return ("unknown", None, None, f"its submission to cluster {cluster} was cut short "
                "and Slurm has no job of its name (squeue, sacct); whether it ran is not known "
                f"(sacct --name {job.placement.get('slurm_name', '')} there may tell)")
    if state.get("slurm_id") and not state.get("scontrol") and said and "disabled" in said:
        return ("unknown", None, None, f"cluster {cluster} no longer knows Slurm job "
                f"{state['slurm_id']} ({said or 'and keeps no accounting'}); "
                "its exit status is lost")
    return None


def _slurm_end(job: Job, look: Look, slurm_state: str, code_text: str, reason: str | None,
               node: str) -> tuple[str, int | None, int | None, str | None] | None:
    """Slurm's end of the job (slurm.ended), with what the attempt's directory says: a job
    Slurm's accounting killed beyond its memory request (OVER_MEMORY in its stderr, signal
    9: OverMemoryKill, which 22.05 records as FAILED JobLaunchFailure) is out of memory, as
    one its cgroup plugin killed (OUT_OF_MEMORY); a launch failure before the batch script
    started says where Slurm writes the output, the likely cause."""
    signal = distsvc.slurm.exit_code(code_text)[1]
    if signal == 9 and look.state.get("overmem") == "yes":
        note = f"Slurm: {slurm_state.split()[0]}" + (f" ({reason})" if reason else "")
        return ("oom", None, None, f"Slurm: exceeded its memory request, killed "
                f"(OverMemoryKill; {note})")
    end = distsvc.slurm.ended(slurm_state, code_text, reason)
    if end is not None and distsvc.slurm.launch_failed(slurm_state, code_text, reason) and \
            look.state.get("started") != "yes":
        cluster = job.placement.get("cluster", "?")
        on = f" on {node}" if node and node != "(null)" else ""
        output = job.placement.get("dir", "").rpartition("/")[0].rpartition("/")[0] or \
            "its output directory"
        return ("failed", None, None, f"Slurm could not launch it{on} (JobLaunchFailure, "
                f"ExitCode {code_text}): its output directory {output} must be on the nodes "
                f"(the `output` setting of cluster {cluster}); it did not run")
    return end


def figures(job: Job, look: Look) -> bool:
    """What Slurm says of the job into its record (placement: slurm_state, slurm_reason,
    node, run_time, elapsed, accounting; cpu_ns and memory_peak from sacct, MaxRSS the
    largest over the steps); True when the record is worth writing again (more changed than
    the run time)."""
    before = dict(job.placement)
    place = job.placement
    state = look.state
    if state.get("slurm_id", "").isdigit():
        place["slurm_id"] = state["slurm_id"]
    found = state.get("dir", "")
    if not place.get("dir") and found.startswith("/") and found.endswith(
            f"/{int(job.id)}.{int(job.attempt)}") and "\n" not in found:
        place["dir"] = found  # where a start whose answer was lost made it
    fields = _fields(look)
    if fields.get("JobState"):
        place["slurm_state"] = fields["JobState"]
        place["slurm_reason"] = distsvc.slurm.reason_text(fields) or ""
        node = fields.get("NodeList", "")
        if node and node != "(null)":
            place["node"] = node
        if fields.get("RunTime"):
            place["run_time"] = fields["RunTime"]
    rows, said = _accounting(job, look)
    if rows:
        place["accounting"] = "sacct"
        top = next((r for r in rows if r["JobID"] == place.get("slurm_id")), rows[0])
        if top["State"] and not fields.get("JobState"):  # slurmctld's is the newer one:
            place["slurm_state"] = top["State"].split()[0]  # slurmdbd's lags behind it
        if top["Elapsed"]:
            place["elapsed"] = top["Elapsed"]
        cpu = distsvc.slurm.parse_duration(top["TotalCPU"])
        if cpu is not None:
            job.cpu_ns = int(cpu * 1e9)
        sizes = [s for r in rows if (s := distsvc.slurm.parse_size(r["MaxRSS"])) is not None]
        if sizes:
            job.memory_peak = max(sizes)
    elif said is not None:
        place["accounting"] = "none: " + said
    # The run time grows at every look: kept in memory, not worth a record's write alone.
    return {k: v for k, v in place.items() if k != "run_time"} != {
        k: v for k, v in before.items() if k != "run_time"}


def collect_script(cluster: distsvc.config.Cluster, origin: str, job: Job,
                   end: tuple[str, int | None, int | None, str | None]) -> str:
    """What an ended job leaves to do on the cluster: a job whose dependency can never be
    satisfied stays PENDING in Slurm for ever, so it is cancelled."""
    slurm_id = job.placement.get("slurm_id", "")
    if end[0] != "dependency-failed" or not slurm_id.isdigit():
        return ""
    return f"{preamble(cluster, origin)}scancel {slurm_id} 2>/dev/null\necho collected=yes"


def stop_script(cluster: distsvc.config.Cluster, origin: str, job: Job, signal_name: str,
                grace: float) -> str:
    """End the whole job: `scancel` (Slurm's SIGTERM to every step, SIGKILL after its
    KillWait); another signal is sent to every step first (`--full`), `scancel` after
    `grace` seconds if it is still there."""
    if not re.fullmatch(r"[A-Z0-9]+", signal_name):
        raise ValueError("bad signal name")
    d = attempt_dir(job)
    steps = max(1, round(grace * 10))
    lines = [preamble(cluster, origin), f"""\
{_find_id(d, job, origin, _since(job, time.time()))}
[ -n "$ds_id" ] || {{ echo "error=its Slurm job ID is not known there"; exit 3; }}"""]
    if signal_name != "TERM":
        lines.append(f"""\
ds_said=$(scancel --full --signal={signal_name} "$ds_id" 2>&1) || case "$ds_said" in
  {_DONE_ALREADY}) echo stopped=yes; exit 0;;
  *) echo "error=scancel: $(printf '%s\n' "$ds_said" | head -n 1)"; exit {EXIT_SCANCEL};;
esac
i=0
while [ $i -lt {steps} ]; do
  case "$(scontrol show job -o "$ds_id" 2>/dev/null)" in {_ACTIVE}) ;; *) break;; esac
  sleep 0.1; i=$((i + 1))
done""")
    lines.append(f"""\
ds_said=$(scancel "$ds_id" 2>&1) || case "$ds_said" in
  {_DONE_ALREADY}) ;;
  *) echo "error=scancel: $(printf '%s\n' "$ds_said" | head -n 1)"; exit {EXIT_SCANCEL};;
esac
echo stopped=yes""")
    return "\n".join(lines)


def controller_down(out: bytes) -> str | None:
    """What squeue said when a look found slurmctld not answering (monitor_script), or None."""
    for line in out.decode("utf-8", "replace").splitlines():
        if line.startswith("controller=down: "):
            return line.removeprefix("controller=down: ").strip() or "squeue failed"
    return None


PAUSE_REFUSAL = ("Slurm lets only its operators suspend a job (scontrol suspend); `distsvc "
                 "job stop` ends it, or `scontrol hold` there keeps a pending one from starting")

