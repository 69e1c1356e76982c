"""Jobs on SSH hosts: the "ssh" placement. Nothing of distsvc is installed on a host.

Every operation is one POSIX shell script sent on the stdin of `/bin/sh -s` over one of the
daemon's pooled SSH sessions (so nothing of it, the job's environment least of all, is on a
command line the host's other users can read in `ps`), answering with `key=value` lines.

On the host, each attempt of a job has a directory of its own, 0700 under a 0700 root:

    ${XDG_STATE_HOME:-~/.local/state}/distsvc/jobs-from/ORIGIN/ID.ATTEMPT/
        env  run  stdout  stderr  record.json  [pidinit.py]  [supervise pid supervisor]  status

ORIGIN names this machine's job store (a random name made once, jobs/store.py), so two
machines of one user sharing a host (or a home over NFS) never meet each other's IDs; every
path and unit name is made here from our own record's ID (digits) and origin (hex), never
from anything a host says.

Two modes, chosen per host by `probe` (cached by the daemon):

- systemd: the user's systemd manager there answers over a non-interactive SSH session (a
  lingering user, or one with a login session; XDG_RUNTIME_DIR and the bus are found as
  /run/user/UID when the session does not set them). The job is `systemd-run --user` as a
  transient service `distsvc-job-ORIGIN8-ID-ATTEMPT.service` in distsvc.slice, with the same
  limits and isolation properties as a local job (written as systemd-run `-p` text), its
  output appended to the files, RemainAfterExit so its status waits for us.
- supervisor: no manager to be had. `setsid` starts a small shell supervisor (its own
  session, so the SSH session's end does not touch it) that starts the command in a session
  of its own, waits for it, and writes its status to `status`. Limits cannot be enforced:
  refused unless --best-effort (then recorded as not enforced); isolation is not given.
  A status above 128 is read as death by signal N-128, as shells report it (the supervisor,
  a shell, cannot tell `exit 130` from SIGINT). A process that starts a session of its own
  and leaves its parent escapes `stop` (no cgroup to find it by).

In both modes the host keeps the job's `status` once it ended (the daemon writes it from
the unit's properties before letting a unit go), so a daemon that restarts, or this machine
rebooting, loses nothing: the job is found by its record here and its directory there.

Output is mirrored to the job's local files (the same files `job logs` reads for a local
job) by `monitor`, which reads, for every running job of a host in one session, its state
and each stream's bytes past what the mirror has (at most LOOK_MAX a look, shared): the
mirror's size is the offset, so a dropped connection resumes where it stopped, without loss
or duplication, and every reader here follows the local files from its own offset.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import distsvc.errors
import distsvc.jobs.isolation
import distsvc.jobs.limits
import distsvc.jobs.record
import distsvc.remote

UNIT_PREFIX = "distsvc-job-"
SLICE = "distsvc.slice"
LOOK_MAX = 1 << 20        # bytes of output a look fetches at first, all jobs and streams
#                           together: a slow link still finishes a look well within
#                           SCRIPT_TIMEOUT; grown up to LOOK_MOST while looks are quick
LOOK_MOST = 64 << 20
FETCH_MIN = 64 << 10      # ... but at least this much of each stream
STOP_TIMEOUT_SEC = 10     # the host's manager's own stop (collect): SIGTERM, then SIGKILL
EXIT_EXISTS = 11          # the start found the attempt's directory there: it may have run
SCRIPT_TIMEOUT = 30.0     # seconds one script may take (a stop waits its grace on top)

# A script's runner: (script, timeout) -> (exit status, stdout). The daemon gives one over
# its pooled sessions to the job's host; tests may give any. Raises HostUnreachable when no
# session could be had, TimeoutError past the timeout.
Runner = Callable[[str, float], tuple[int, bytes]]

_ORIGIN = re.compile(r"^[0-9a-f]{8,64}$")
_ID = re.compile(r"^[0-9]{1,18}$")


class HostCannot(distsvc.errors.DistsvcError):
    """This host cannot run this job (another may): why, in one line."""

    exit_status = distsvc.errors.EXIT_JOB


class StartRefused(HostCannot):
    """The command or its directory is wrong for this host: 127 not found, 126 not
    executable, 4 no such directory."""


@dataclasses.dataclass(frozen=True)
class Caps:
    """What a host gives jobs, probed once (see `probe`)."""

    mode: str                               # "systemd" or "supervisor"
    why_no_systemd: str | None              # why not, in supervisor mode
    controllers: frozenset[str]             # cgroup controllers delegated to the manager
    python3: str | None                     # for pid isolation (pidinit)
    isolation: Mapping[str, str | None]     # kind -> None (given) or why not
    root: str                               # the jobs directory of this origin there


def _check(origin: str, job_id: str, attempt: int) -> None:
    if not _ORIGIN.match(origin) or not _ID.match(job_id) or not 0 < attempt < 10_000:
        raise ValueError("bad origin, job ID or attempt")  # never a path from elsewhere


def unit_name(origin: str, job_id: str, attempt: int) -> str:
    _check(origin, job_id, attempt)
    return f"{UNIT_PREFIX}{origin[:8]}-{job_id}-{attempt}.service"


def _q(text: str) -> str:
    return shlex.quote(text)


def _preamble(origin: str) -> str:
    """Every script starts with this: no-one else may read what it makes; the user's
    manager found as a login session would find it; `ds_root` is this origin's directory."""
    if not _ORIGIN.match(origin):
        raise ValueError("bad origin")
    return f"""\
umask 077
ds_uid=$(id -u)
: "${{XDG_RUNTIME_DIR:=/run/user/$ds_uid}}"; export XDG_RUNTIME_DIR
if [ -z "${{DBUS_SESSION_BUS_ADDRESS:-}}" ] && [ -S "$XDG_RUNTIME_DIR/bus" ]; then
  DBUS_SESSION_BUS_ADDRESS="unix:path=$XDG_RUNTIME_DIR/bus"; export DBUS_SESSION_BUS_ADDRESS
fi
ds_state="${{XDG_STATE_HOME:-$HOME/.local/state}}"
ds_root="$ds_state/distsvc/jobs-from/{origin}"
"""


def heredoc(path: str, text: str) -> str:
    """Shell that writes `text` (which must not hold the random end line) to `path`."""
    end = f"DISTSVC_END_{secrets.token_hex(8)}"
    if not text.endswith("\n"):
        text += "\n"
    assert f"\n{end}\n" not in f"\n{text}"
    return f"cat > {path} <<'{end}'\n{text}{end}\n"


def parse(out: bytes) -> dict[str, str]:
    """`key=value` lines; the last value of a key wins."""
    values = {}
    for line in out.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[a-z_0-9]+", key):
            values[key] = value
    return values


# -- probing a host ----------------------------------------------------------------------

_PROBE = r"""
echo "root=$ds_root"
if command -v systemd-run >/dev/null 2>&1 && command -v systemctl >/dev/null 2>&1; then
  if v=$(systemctl --user show -p Version --value 2>&1) && [ -n "$v" ]; then
    echo "systemd=$v"
    cg=$(systemctl --user show -p ControlGroup --value 2>/dev/null)
    if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ] && [ -n "$cg" ]; then
      echo "controllers=$(cat "/sys/fs/cgroup$cg/cgroup.controllers" 2>/dev/null)"
    else
      echo "controllers="
    fi
    out=$(systemd-run --user --quiet --wait --pipe --collect --unit="distsvc-probe-$$" \
      -p PrivateUsers=yes -p PrivateNetwork=yes -p PrivateMounts=yes -p PrivateTmp=yes \
      /bin/sh -c 'for n in net mnt user; do echo "$n=$(readlink /proc/self/ns/$n)"; done
                  echo "tmp=$(ls -A /tmp | wc -l)"' \
      </dev/null 2>&1)
    echo "$out" | sed -n 's/^\(net\|mnt\|user\|tmp\)=/in_\1=/p'
    echo "out_net=$(readlink /proc/self/ns/net)"
    echo "out_mnt=$(readlink /proc/self/ns/mnt)"
    echo "out_user=$(readlink /proc/self/ns/user)"
    echo "out_tmp=$(ls -A /tmp | wc -l)"
  else
    echo "no_systemd=$(printf %s "$v" | head -n 1)"
  fi
else
  echo "no_systemd=systemd-run is not installed"
fi
p=$(command -v python3 2>/dev/null) && echo "python3=$p"
command -v setsid >/dev/null 2>&1 || echo "no_setsid=yes"
echo "end=yes"
"""


def probe_script(origin: str) -> str:
    return _preamble(origin) + _PROBE


def read_probe(out: bytes) -> Caps:
    """The host's capabilities from what `probe_script` printed."""
    v = parse(out)
    if v.get("end") != "yes" or "root" not in v:
        raise HostCannot("the host did not answer the job probe (is /bin/sh a POSIX shell?)")
    if "systemd" not in v:
        if v.get("no_setsid"):
            raise HostCannot("neither a systemd user manager nor setsid(1) there")
        why = v.get("no_systemd") or "no systemd user manager answers"
        none = "no systemd user manager there (supervisor mode)"
        return Caps("supervisor", f"no systemd user manager reachable ({why})", frozenset(),
                    v.get("python3"), {k: none for k in distsvc.jobs.isolation.KINDS},
                    v["root"])
    isolation: dict[str, str | None] = {}
    userns = v.get("in_user") and v.get("in_user") != v.get("out_user")
    failed = "the host's manager did not give it (seen from inside a probe unit)"
    isolation["network"] = None if v.get("in_net") and v["in_net"] != v.get("out_net") \
        else failed
    isolation["mount"] = None if (v.get("in_mnt") and v["in_mnt"] != v.get("out_mnt")
                                  and v.get("in_tmp") == "0") else failed
    if not v.get("python3"):
        isolation["pid"] = "no python3 on the host (pid isolation runs a small init with it)"
    else:
        isolation["pid"] = None if userns else failed
    return Caps("systemd", None, frozenset(v.get("controllers", "").split()),
                v.get("python3"), isolation, v["root"])


# -- starting ------------------------------------------------------------------------------

def _text_properties(job: distsvc.jobs.record.Job, plan: distsvc.jobs.isolation.Plan
                     ) -> list[str]:
    """The unit's limits and isolation as systemd-run `-p` assignments: the very properties
    of a local unit (jobs/limits.properties, isolation.plan), written as text."""
    props = []
    for key, value in {**distsvc.jobs.limits.properties(job.limits, job.cwd),
                       **plan.properties}.items():
        if key == "CPUQuotaPerSecUSec" and isinstance(value, int):
            key, value = "CPUQuota", f"{value / 10_000:g}%"  # systemd-run takes a percentage
        elif key.endswith("USec") and isinstance(value, int):
            key, value = key[:-4] + "Sec", f"{value}us"  # RuntimeMaxUSec -> RuntimeMaxSec
        if isinstance(value, list):  # [(path, bytes)]: bandwidth per device
            props += [f"{key}={path} {rate}" for path, rate in value]
            continue
        props.append(f"{key}={'yes' if value is True else 'no' if value is False else value}")
    return props


def env_script(env: Mapping[str, str]) -> str:
    """The job's environment file: sourced by its run script, where it runs. PATH is the
    carried one with the entries the machine lacks dropped and its own appended."""
    return "".join(line + "\n" for line in
                   ["_ds_nl='\n'", distsvc.remote.SAVE_HOST_PATH,
                    *distsvc.remote.export_lines(env), distsvc.remote.PATH_FOR_HOST])


def check_lines(job: distsvc.jobs.record.Job) -> str:
    """Shell that checks, in the job's environment ("$D/env") and directory, that its
    command can be run: exit 4 no directory, 127 not found, 126 not executable (the
    attempt's directory removed, one line `error=`); prints program= and dir= otherwise."""
    return f"""\
ds_check=$( . "$D/env"; cd -- {_q(job.cwd)} 2>/dev/null || {{ echo "nodir"; exit 4; }}
  p=$(command -v -- {_q(job.argv[0])}) || {{ echo "notfound PATH=$PATH"; exit 127; }}
  case $p in /*) [ -x "$p" ] && [ ! -d "$p" ] || {{ echo "notexec"; exit 126; }};; esac
  echo "$p" )
ds_s=$?
if [ $ds_s -ne 0 ]; then rm -rf "$D"; echo "error=$ds_check"; exit $ds_s; fi
echo "program=$ds_check"
echo "dir=$D"
"""


def start_script(origin: str, job: distsvc.jobs.record.Job, env: Mapping[str, str],
                 caps: Caps, record_json: str) -> str:
    """Start attempt `job.attempt` of `job` on the host (see the module docstring).

    Before anything starts, in the job's own environment and directory, the command is
    looked up (exit 127 not found, 126 not executable, 4 no directory; one line `error=`).
    A directory of the attempt that exists already means it may have started before: exit
    11, nothing done (a job is never run twice). Prints started=yes, dir=, and unit= or pid=.
    """
    _check(origin, job.id, job.attempt)
    attempt_dir = f'"$ds_root/{job.id}.{job.attempt}"'
    cwd = _q(job.cwd)
    run = ('. "${0%/run}/env"\n'  # run as `/bin/sh DIR/run CMD...`
           f"cd -- {cwd} || exit 200\n"
           ': > "${0%/run}/started"\n'  # from here on, 200-243 are the command's own
           'exec "$@"\n')
    kinds = list(job.isolation)
    plan = distsvc.jobs.isolation.plan(kinds, user_manager=True)
    prefix: list[str] = []
    if "pid" in kinds:
        prefix = [caps.python3 or "python3", "-I", "-S", f"{caps.root}/{job.id}.{job.attempt}"
                  "/pidinit.py", "--user-namespace", "--"]
    lines = [
        _preamble(origin),
        'mkdir -p "$ds_root" && chmod 700 "$ds_state/distsvc" "$ds_state/distsvc/jobs-from" '
        '"$ds_root" || { echo "error=cannot make $ds_root"; exit 10; }',
        f"mkdir {attempt_dir} 2>/dev/null || {{ echo 'error=exists'; exit {EXIT_EXISTS}; }}",
        f"D={attempt_dir}",
        heredoc('"$D/env"', env_script(env)),
        heredoc('"$D/run"', run),
        heredoc('"$D/record.json"', record_json),
        ': > "$D/stdout"; : > "$D/stderr"',
    ]
    if "pid" in kinds:
        source = Path(distsvc.jobs.isolation.PIDINIT).read_text(encoding="utf-8")
        lines.append(heredoc('"$D/pidinit.py"', source))
    lines.append(check_lines(job))
    command = " ".join(_q(a) for a in [*prefix, *job.argv])
    if caps.mode == "systemd":
        # The manager expands $VAR and turns $$ into $ in a unit's command, systemd-run's
        # too (252 has no --expand-environment=no): every $ doubled, the command gets its
        # arguments exactly, as jobs/local.py's units do.
        command = " ".join(_q(a.replace("$", "$$")) for a in [*prefix, *job.argv])
        unit = unit_name(origin, job.id, job.attempt)
        props = [*_text_properties(job, plan),
                 "RemainAfterExit=yes", "KillMode=control-group", "SendSIGKILL=yes",
                 f"TimeoutStopSec={STOP_TIMEOUT_SEC}"]
        description = f"distsvc job {job.id}: {' '.join(job.argv)}"[:200]
        lines.append(
            f"systemd-run --user --quiet --unit={unit} --slice={SLICE} "
            f"--description={_q(description)} "
            + " ".join(f"-p {_q(p)}" for p in props)
            + ' -p "StandardOutput=append:$D/stdout" -p "StandardError=append:$D/stderr"'
            + f' -- /bin/sh "$D/run" {command} </dev/null 2>"$D/start-error" || '
            '{ echo "error=systemd-run: $(head -n 1 "$D/start-error")"; rm -rf "$D"; exit 12; }'
            f"\necho 'unit={unit}'\necho 'started=yes'")
    else:
        lines.append(heredoc('"$D/supervise"', _SUPERVISE))
        lines.append(f"""\
setsid /bin/sh "$D/supervise" "$D" {command} </dev/null >/dev/null 2>&1 &
echo $! > "$D/supervisor"
i=0
while [ ! -s "$D/pid" ] && [ ! -e "$D/status" ] && [ $i -lt 1000 ]; do
  sleep 0.005; i=$((i + 1))
done
echo "supervisor=$(cat "$D/supervisor")"
echo "pid=$(cat "$D/pid" 2>/dev/null)"
echo "started=yes"
""")
    return "\n".join(lines)


# The supervisor: argv D CMD...; its own session (setsid), HUP ignored; the command in a
# session of its own (`setsid` in a background child execs in place: $! is the command).
_SUPERVISE = r"""trap '' HUP INT QUIT PIPE
D=$1; shift
setsid /bin/sh "$D/run" "$@" </dev/null >>"$D/stdout" 2>>"$D/stderr" &
c=$!
echo "$c" > "$D/pid.new" && mv "$D/pid.new" "$D/pid"
wait "$c"; s=$?
echo "supervisor $s" > "$D/status.new" && mv "$D/status.new" "$D/status"
"""


def read_start(code: int, out: bytes, host: str) -> dict[str, str]:
    """The start's answer: {"dir", "unit" or "pid", "program"}; StartRefused or HostCannot
    with one line otherwise."""
    v = parse(out)
    error = v.get("error", "")
    if code == 0 and v.get("started") == "yes":
        return v
    if code == 127:
        path = error.partition("PATH=")[2]
        raise _refused(f"command not found on {host} (PATH={path})", 127)
    if code == 126:
        raise _refused(f"not executable on {host}", 126)
    if code == 4:
        raise _refused(f"no such directory on {host} (choose another with --workdir)", 4)
    if code == EXIT_EXISTS:
        raise HostCannot(f"a directory of this attempt exists on {host} already; not started "
                         "again (a job is never run twice)")
    raise HostCannot(f"could not start the job on {host}: "
                     f"{error or 'the start script ended with status ' + str(code)}")


def _refused(message: str, status: int) -> StartRefused:
    error = StartRefused(message)
    error.exit_status = status
    return error


# -- watching ------------------------------------------------------------------------------

# Processes of the command's session S, and their descendants (what left the session by
# setsid while its parent lives), parents first.
_TREE = r"""
ds_tree() {
  ps -A -ww -o pid= -o ppid= -o sid= 2>/dev/null | awk -v s="$1" '
    { pp[$1] = $2; all[++n] = $1; if ($3 == s) m[$1] = 1 }
    END { do { c = 0; for (i = 1; i <= n; i++) { p = all[i]
            if (!(p in m) && (pp[p] in m)) { m[p] = 1; c = 1 } } } while (c)
          for (p in m) { d = 0; q = p; while ((q in m) && d < 64) { q = pp[q]; d++ }
            print d, p } }' | sort -n | cut -d' ' -f2
}
ds_signal() { ds_tree "$1" | xargs kill -s "$2" 2>/dev/null; return 0; }
"""

_SHOW = ("ActiveState,SubState,Result,ExecMainCode,ExecMainStatus,MainPID,CPUUsageNSec,"
         "MemoryCurrent,LoadState,FreezerState")


def job_dir(placement: Mapping[str, str]) -> str:
    directory = placement.get("dir", "")
    if not directory.startswith("/") or "\n" in directory:
        raise ValueError("bad remote directory")
    return _q(directory)


@dataclasses.dataclass
class Look:
    """What `monitor` saw of one job."""

    state: dict[str, str]                       # key=value lines of its state
    data: dict[str, tuple[int, bytes]]          # stream -> (offset, bytes from there)
    sizes: dict[str, int]                       # stream -> its size on the host


def fetch_function(budget: int, jobs: int) -> str:
    """Shell defining `ds_fetch STREAM FILE OFFSET`: the file's bytes past OFFSET (at most
    `budget` shared by `jobs` jobs' two streams, at least FETCH_MIN each), framed as
    `read_monitor` reads them. Needs $ds_root (its temporary copy lives there)."""
    each = max(FETCH_MIN, budget // max(1, 2 * jobs))
    return r"""
ds_tmp="$ds_root/.look-$$"
trap 'rm -f "$ds_tmp"' EXIT
ds_fetch() {  # stream file offset
  n=$(wc -c < "$2" 2>/dev/null) || n=0
  l=$((n - $3)); [ $l -gt EACH ] && l=EACH; [ $l -lt 0 ] && l=0
  if [ $l -gt 0 ]; then
    tail -c +$(($3 + 1)) "$2" | head -c $l > "$ds_tmp" 2>/dev/null
    l=$(wc -c < "$ds_tmp" 2>/dev/null) || l=0
  fi
  echo "data $1 $3 $l $n"
  [ $l -gt 0 ] && cat "$ds_tmp"
  echo
}
""".replace("EACH", str(each))


def fetch_lines(directory: str, sizes: Mapping[str, int]) -> str:
    """Both streams of the job in `directory` (shell-quoted) past the mirror's `sizes`."""
    return "\n".join(f"ds_fetch {stream} {directory}/{stream} {int(sizes.get(stream, 0))}"
                     for stream in ("stdout", "stderr"))


def monitor_script(origin: str, jobs: Sequence[tuple[distsvc.jobs.record.Job,
                                                     Mapping[str, int]]],
                   budget: int = LOOK_MAX) -> str:
    """One look at each of `jobs` (with the mirror's sizes): its state, then each stream's
    size and the bytes past the mirror's (`budget` shared by all, at least FETCH_MIN each;
    the watcher grows it while looks are quick and shrinks it when they are slow).

    The bytes are copied to a temporary file first and announced with the copy's own size,
    so the answer's framing holds even if a file shrank meanwhile (a job that truncates its
    own output); such a file's mirror is then only appended to, never rewritten."""
    parts = [_preamble(origin), _TREE, fetch_function(budget, len(jobs))]
    for job, sizes in jobs:

        placement = job.placement
        d = job_dir(placement)
        parts.append(f'echo "job {job.id}"')
        # The live state first, then the status file: a supervisor writes its status before
        # it exits, so one seen gone has left its status to be seen.
        if placement.get("mode") == "systemd":
            unit = _q(placement.get("unit", ""))
            parts.append(f"systemctl --user show -p {_SHOW} {unit} 2>/dev/null "
                         "| sed 's/^\\([A-Za-z]*\\)=/u_\\1=/' | tr 'A-Z' 'a-z'")
        else:
            parts.append(f"""\
if [ -s {d}/supervisor ]; then
  sp=$(cat {d}/supervisor)
  if ps -o args= -p "$sp" 2>/dev/null | grep -q supervise; then echo "alive=yes"
  else echo "alive=no"; fi
else echo "alive=no"; fi""")
        parts.append(f'if [ -e {d}/status ]; then echo "status=$(cat {d}/status)"; fi')
        parts.append(f'[ -e {d}/started ] && echo "started=yes"')
        parts.append(f'[ -d {d} ] || echo "gone=yes"')
        parts.append(fetch_lines(d, sizes))
        parts.append('echo "end"')
    parts.append('echo "monitor=done"')
    return "\n".join(parts)


def read_monitor(out: bytes) -> dict[str, Look]:
    """Job ID -> Look; a job whose block is incomplete is left out (looked at again)."""
    looks: dict[str, Look] = {}
    position = 0
    current: Look | None = None
    current_id = ""
    while position < len(out):
        end = out.find(b"\n", position)
        if end < 0:
            break
        line = out[position:end].decode("utf-8", "replace")
        position = end + 1
        if line.startswith("job "):
            current_id, current = line[4:], Look({}, {}, {})
        elif current is None:
            continue
        elif line.startswith("data "):
            try:
                _, stream, offset_text, length, size_text = line.split()
                count, offset, size = int(length), int(offset_text), int(size_text)
            except ValueError:
                break  # not the framing announced: the look is not trusted
            chunk = out[position:position + count]
            if len(chunk) < count:
                break  # cut short: the whole block is looked at again
            if out[position + count:position + count + 1] != b"\n":
                break  # not the framing announced: the look is not trusted
            current.data[stream] = (offset, chunk)
            current.sizes[stream] = size
            position += count + 1  # the newline after the bytes
        elif line == "end":
            looks[current_id] = current
            current = None
        else:
            key, sep, value = line.partition("=")
            if sep:
                current.state[key] = value
    return looks


def ended(job: distsvc.jobs.record.Job, look: Look
          ) -> tuple[str, int | None, int | None, str | None] | None:
    """How the job ended, from what the host keeps: (state, exit code, signal, reason), or
    None while it runs."""
    state = look.state
    status = state.get("status", "").split()
    started = state.get("started") == "yes"  # the run script got as far as the exec
    if status[:1] == ["supervisor"] and len(status) >= 2 and status[1].isdigit():
        code = int(status[1])
        if code > 128 and code - 128 < 65:
            return ("killed", None, code - 128, None)
        if code == 200 and not started:
            return ("failed", None, None, "cannot change to the working directory")
        return ("exited", code, None, None)
    if status[:1] == ["systemd"] and len(status) == 5:
        _, active, result, main_code, main_status = status
        return distsvc.jobs.record.finished(active, result, int(main_code), int(main_status),
                                            command_started=started)
    host = job.placement.get("host", "?")
    if state.get("gone") == "yes" and job.state == "starting":
        return ("failed", None, None, f"its start on {host} was cut short before it began "
                "(the daemon stopped?); it did not run")
    if state.get("gone") == "yes":
        return ("unknown", None, None,
                f"its directory on {host} is gone; its exit status is lost")
    if job.placement.get("mode") == "systemd":
        if "u_activestate" not in state:
            return None  # the host's manager did not answer: looked at again
        if state.get("u_loadstate") == "not-found":
            return ("unknown", None, None, f"its unit on {host} is gone (the host rebooted, "
                    "or its user manager restarted?); its exit status is lost")
        try:
            return distsvc.jobs.record.finished(
                state["u_activestate"], state.get("u_result", ""),
                int(state.get("u_execmaincode", "0") or 0),
                int(state.get("u_execmainstatus", "0") or 0), command_started=started)
        except ValueError:
            return None
    if state.get("alive") == "no":
        return ("unknown", None, None, f"its supervisor on {host} is gone without a status "
                "(the host rebooted?); its exit status is lost")
    return None


def figures(job: distsvc.jobs.record.Job, look: Look) -> None:
    """CPU time and memory from the host's unit, when it has them."""
    for key, field in (("u_cpuusagensec", "cpu_ns"), ("u_memorycurrent", "memory_current")):
        value = look.state.get(key, "")
        if value.isdigit() and int(value) < (1 << 63) - 1:
            setattr(job, field, int(value))


def collect_script(origin: str, job: distsvc.jobs.record.Job, look: Look) -> str:
    """For an ended job: its status kept on the host, then what it left ended (the unit let
    go; the supervisor's session signalled)."""
    d = job_dir(job.placement)
    parts = [_preamble(origin), _TREE]
    if job.placement.get("mode") == "systemd":
        unit = _q(job.placement.get("unit", ""))
        s = look.state
        status = " ".join([s.get("u_activestate", "inactive"), s.get("u_result", "success"),
                           s.get("u_execmaincode", "0") or "0",
                           s.get("u_execmainstatus", "0") or "0"])
        if "status" not in look.state and "u_activestate" in s:
            parts.append(f'[ -e {d}/status ] || {{ echo "systemd {status}" > {d}/status.new '
                         f"&& mv {d}/status.new {d}/status; }}")
        parts.append(f"systemctl --user stop {unit} 2>/dev/null; "
                     f"systemctl --user reset-failed {unit} 2>/dev/null")
    else:
        parts.append(f'[ -s {d}/pid ] && ds_signal "$(cat {d}/pid)" KILL')
    parts.append("echo collected=yes")
    return "\n".join(parts)


# -- acting on a running job -----------------------------------------------------------------

def stop_script(origin: str, job: distsvc.jobs.record.Job, signal_name: str,
                grace: float) -> str:
    """`signal_name` to every process of the job (thawed first if paused); SIGKILL to what
    is left after `grace` seconds."""
    if not re.fullmatch(r"[A-Z0-9]+", signal_name):
        raise ValueError("bad signal name")
    d = job_dir(job.placement)
    steps = max(1, round(grace * 10))
    parts = [_preamble(origin), _TREE]
    if job.placement.get("mode") == "systemd":
        unit = _q(job.placement.get("unit", ""))
        parts.append(f"""\
systemctl --user thaw {unit} 2>/dev/null
systemctl --user kill -s CONT {unit} 2>/dev/null
systemctl --user kill -s {signal_name} {unit} || {{ echo "error=kill failed"; exit 3; }}
i=0
while [ $i -lt {steps} ]; do
  [ "$(systemctl --user show -p MainPID --value {unit})" = 0 ] && break
  sleep 0.1; i=$((i + 1))
done
[ "$(systemctl --user show -p MainPID --value {unit})" = 0 ] || systemctl --user kill -s KILL {unit}
echo stopped=yes""")
    else:
        parts.append(f"""\
c=$(cat {d}/pid 2>/dev/null) || {{ echo "error=no pid"; exit 3; }}
ds_signal "$c" CONT
ds_signal "$c" {signal_name}
i=0
while [ $i -lt {steps} ] && [ ! -e {d}/status ]; do sleep 0.1; i=$((i + 1)); done
ds_signal "$c" KILL
echo stopped=yes""")
    return "\n".join(parts)


def pause_script(origin: str, job: distsvc.jobs.record.Job, pause: bool) -> str:
    """Freeze (the unit's freezer, else SIGSTOP to every process, twice over for what forked
    meanwhile) or thaw; prints method=freezer|signals."""
    d = job_dir(job.placement)
    parts = [_preamble(origin), _TREE]
    if job.placement.get("mode") == "systemd":
        unit = _q(job.placement.get("unit", ""))
        if pause:
            parts.append(f"""\
if systemctl --user freeze {unit} 2>/dev/null; then echo method=freezer
else systemctl --user kill -s STOP {unit} && systemctl --user kill -s STOP {unit} &&
  echo method=signals; fi""")
        elif job.pause_method == "freezer":
            parts.append(f"systemctl --user thaw {unit} && echo method=freezer")
        else:
            parts.append(f"systemctl --user kill -s CONT {unit} && echo method=signals")
    else:
        times = 2 if pause else 1  # twice over, for what forked meanwhile
        sig = "STOP" if pause else "CONT"
        parts.append(f"c=$(cat {d}/pid 2>/dev/null) || exit 3\n"
                     + f'ds_signal "$c" {sig}\n' * times + "echo method=signals")
    return "\n".join(parts)


def remove_script(origin: str, directories: Sequence[str], max_age_days: int | None) -> str:
    """Remove these attempt directories of ended jobs; with `max_age_days`, also any
    directory of this origin whose status is older (retention on the host for records
    removed here while it was down)."""
    parts = [_preamble(origin)]
    for directory in directories:
        parts.append(f"rm -rf -- {job_dir({'dir': directory})}")
    if max_age_days is not None:
        parts.append(f'[ -d "$ds_root" ] && find "$ds_root" -mindepth 2 -maxdepth 2 -name status '
                     f"-mtime +{int(max_age_days)} 2>/dev/null | while IFS= read -r f; do "
                     'rm -rf -- "${f%/status}"; done')
    parts.append("echo removed=yes")
    return "\n".join(parts)


def cut_script(origin: str, job: distsvc.jobs.record.Job, max_bytes: int) -> str:
    """Retention on the host: each stream of an ended attempt cut to its last `max_bytes`."""
    d = job_dir(job.placement)
    parts = [_preamble(origin)]
    for stream in ("stdout", "stderr"):
        f = f"{d}/{stream}"
        parts.append(f'if [ "$(wc -c < {f})" -gt {int(max_bytes)} ]; then '
                     f"tail -c {int(max_bytes)} {f} > {f}.cut && mv {f}.cut {f}; fi")
    parts.append("echo cut=yes")
    return "\n".join(parts)
