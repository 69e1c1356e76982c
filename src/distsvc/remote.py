"""Remote command lines: the wrapper that runs a user's command on a host. Pure text, no I/O.

paramiko cannot deliver signals to a remote process, and a dropped connection does not end a
command that ignores SIGHUP or never writes. So every command runs under a small POSIX shell
wrapper that

- changes to the working directory (a clear error and status 255 if it is missing),
- takes the carried environment as shell code on stdin ahead of the user's input (no reliance
  on the server's AcceptEnv, and unlike the command line, not visible to others in `ps`);
  with a terminal, where stdin would echo, from a 0600 file written by a side channel,
- runs the command in the foreground, so it keeps the terminal and default signal actions,
- starts a watcher that, once the wrapper's parent (the sshd session) is gone, ends the
  command's whole process tree: SIGTERM, then SIGKILL for what is left two seconds later.

sshd gives every channel a session of its own, so "the command's tree" is every descendant
of the wrapper plus every process in a session one of them belongs to: that also catches
children that were re-parented to init. Signals from the user (Ctrl-C, SIGTERM, SIGHUP) are
delivered by a second channel running `kill_command`, which finds the wrapper by a random
token in its argv, and escalates to SIGTERM and SIGKILL for what the signal left running.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Mapping, Sequence

WRAPPER_STATUS_NO_WORKDIR = 255
WATCH_INTERVAL = 1  # seconds between checks that the ssh session still exists
KILL_GRACE = 2  # seconds a signal is given to work before the next, stronger one

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Shell functions that end a command's tree. `ds_sessions W` names the sessions of the wrapper W
# and its descendants; `ds_members W SESSIONS` lists their processes except W itself, the
# watcher and the caller's own subtree; `ds_end W SIGNAL...` sends each signal in turn to the
# members, going on to the next only if some are still there after KILL_GRACE seconds. The
# sessions are named once, up front: after W exits, its orphans are still found by them.
# Members are signalled parents first (by depth below W): dash, whose foreground child died
# of a signal before the same signal reached dash itself, goes on and exits 0 half the time
# (seen locally, 152 of 300), and the command's status would lie.
# Needs procps `ps` (for `sid` and `-ww`) and a `sleep` that takes fractions (GNU coreutils).
_END_TREE = r"""
ds_sessions() {
  ps -A -ww -o pid= -o ppid= -o sid= 2>/dev/null | awk -v w="$1" '
    { pp[$1] = $2; s[$1] = $3; all[++n] = $1 }
    END { d[w] = 1
      do { c = 0; for (i = 1; i <= n; i++) { p = all[i]
        if (!(p in d) && (pp[p] in d)) { d[p] = 1; c = 1 } } } while (c)
      for (p in d) if (p in s) printf "%s ", s[p] }'
}
ds_members() {
  ps -A -ww -o pid= -o ppid= -o sid= -o args= 2>/dev/null | awk -v w="$1" -v ss="$2" -v k="$$" '
    BEGIN { split(ss, a, " "); for (i in a) want[a[i]] = 1 }
    { pp[$1] = $2; all[++n] = $1; if ($3 in want) m[$1] = 1
      if ($NF == "distsvc-watcher") x[$1] = 1 }
    END { x[k] = 1
      do { c = 0; for (i = 1; i <= n; i++) { p = all[i]
        if (!(p in x) && (pp[p] in x)) { x[p] = 1; c = 1 } } } while (c)
      for (p in m) if (p != w && !(p in x)) {
        d = 0; q = p; while ((q in pp) && q != w && d < 64) { q = pp[q]; d++ }
        print d, p } }'
}
ds_end() {
  w=$1; shift
  ss=$(ds_sessions "$w"); [ -n "$ss" ] || return 0
  for sig in "$@"; do
    ds_members "$w" "$ss" | sort -n | cut -d' ' -f2 | xargs kill -s "$sig" 2>/dev/null
    i=0
    while [ $i -lt GRACE ]; do
      [ -n "$(ds_members "$w" "$ss")" ] || return 0
      sleep 0.1; i=$((i + 1))
    done
  done
}
""".replace("GRACE", str(KILL_GRACE * 10))

# Environment: P the sshd session process (the wrapper's parent), W the wrapper. They are not
# arguments so that the last word of the watcher's argv is its name, which ds_members skips.
_WATCHER = _END_TREE + rf"""
trap '' HUP INT QUIT
trap 'kill $t 2>/dev/null; exit 0' TERM
while kill -0 "$P" 2>/dev/null; do sleep {WATCH_INTERVAL} & t=$!; wait $t; done
ds_end "$W" TERM KILL
"""


def new_token() -> str:
    return secrets.token_hex(12)


def command_line(argv: Sequence[str]) -> str:
    """argv as one shell command line that the remote shell splits back exactly."""
    return " ".join(shlex.quote(arg) for arg in argv)


def exportable(environ: Mapping[str, str]) -> dict[str, str]:
    """Names a POSIX shell can export (not bash's exported functions), except the wrapper's
    own `_ds_` variables, which the environment must not overwrite."""
    return {k: v for k, v in environ.items() if _NAME.match(k) and not k.startswith("_ds_")}


ENV_END = "distsvc-env-end"


def _env_line(name: str, value: str) -> str:
    # One line per variable, so the wrapper can read them with `read -r`; newlines in values
    # are spliced back in from $_ds_nl.
    return f"export {name}=" + "\"$_ds_nl\"".join(shlex.quote(part) for part in value.split("\n"))


def environment_script(environ: Mapping[str, str]) -> str:
    """The environment as shell code, one line each, ending with the ENV_END line."""
    return "".join(line + "\n" for line in [*export_lines(environ), ENV_END])


def export_lines(environ: Mapping[str, str]) -> list[str]:
    """One `export NAME=...` line per exportable variable, sorted; newlines in values come
    from $_ds_nl, which the script running them sets to a newline first."""
    return [_env_line(k, v) for k, v in sorted(exportable(environ).items())]


def env_file(token: str) -> str:
    return f"${{TMPDIR:-/tmp}}/distsvc-env-{token}"


def env_file_writer(token: str) -> str:
    """Command that stores environment_script() from stdin in a file only the user can read."""
    return f"umask 077; set -C; cat > \"{env_file(token)}\""


# The PATH a command gets on a host: the carried one's absolute entries that are directories
# there the user may search, its relative ones as they are (they name directories under the
# working directory, which is not entered yet: `node_modules/.bin`), then the host's own
# (`_ds_hp`, saved before the environment is set) that are not among them. A carried entry the
# host lacks, or cannot read, would otherwise turn "not found" into "Permission denied" (a
# shell reports the last EACCES of its search), and a command the host has elsewhere would not
# be found at all.
SAVE_HOST_PATH = '_ds_hp=$PATH'
PATH_FOR_HOST = (
    '_ds_np=; set -f; _ds_ifs=$IFS; IFS=:; for _ds_d in $PATH $_ds_hp; do '
    'case ":$_ds_np:" in *:"$_ds_d":*) continue;; esac; '
    'case $_ds_d in /*) [ -d "$_ds_d" ] && [ -x "$_ds_d" ] || continue;; esac; '
    '_ds_np=${_ds_np:+$_ds_np:}$_ds_d; done; IFS=$_ds_ifs; set +f; '
    '[ -z "$_ds_np" ] || PATH=$_ds_np')


def lookup_check(argv0: str, host: str) -> str:
    """Shell code that finds argv0 as the shell would, and when it cannot run, says why in
    the user's terms (their command, the host's name) and exits as a shell would: 127 not
    found, 126 not executable. Without it the shell's own message would
    name the wrapper (`distsvc-TOKEN: 45: cmd: not found`). The same for dash and bash,
    whose `command -v` differ for files that are not executable."""
    name = shlex.quote(argv0)

    def say(why: str, status: int) -> str:
        return (f"{{ printf 'distsvc: %s: {why} on %s\\n' {name} {shlex.quote(host)} >&2; "
                f"exit {status}; }}")

    return "\n".join([
        f"case {name} in",
        f"*/*) _ds_x={name}; [ -e \"$_ds_x\" ] || {say('No such file or directory', 127)};;",
        f"*) _ds_x=$(command -v -- {name}) || {say('command not found', 127)};;",
        "esac",
        'case $_ds_x in */*) if [ -d "$_ds_x" ] || [ ! -x "$_ds_x" ]; then '
        + say("Permission denied", 126) + "; fi;; esac",
    ])


def wrapper(argv: Sequence[str], workdir: str | None, token: str, env_from_file: bool,
            host: str) -> str:
    """The command line to hand to `exec_command` for running argv under the wrapper.

    Send environment_script() first on stdin, or with env_from_file, store it with
    env_file_writer() before. `host` names the host in what the wrapper says.
    """
    # Own variables are prefixed `_ds_`; exportable() keeps the environment off them.
    lines = ["_ds_p=$PPID", "_ds_nl='\n'", SAVE_HOST_PATH]
    # dash and bash read a pipe one byte at a time here: the user's input stays unread.
    read_environment = (
        f'while IFS= read -r _ds_l && [ "$_ds_l" != {ENV_END} ]; do eval "$_ds_l"; done')
    if env_from_file:
        lines.append(f'_ds_f="{env_file(token)}"; {read_environment} < "$_ds_f"; rm -f "$_ds_f"')
    else:
        lines.append(read_environment)
    lines.append(PATH_FOR_HOST)
    if workdir is not None:
        where = shlex.quote(workdir)
        lines.append(
            f"cd -- {where} 2>/dev/null || {{ printf 'distsvc: %s: no such directory on %s "
            f"(choose another with --workdir)\\n' {where} {shlex.quote(host)} >&2; "
            f"exit {WRAPPER_STATUS_NO_WORKDIR}; }}")
    lines.append(lookup_check(argv[0], host))
    lines += [
        # The watcher runs with INT/QUIT ignored (an asynchronous list) and HUP ignored by itself,
        # and off the channel: a sleep of its own still holding the output would keep sshd from
        # closing the session, a second after the command ended.
        f"P=$_ds_p W=$$ /bin/sh -c {shlex.quote(_WATCHER)} distsvc-watcher"
        " </dev/null >/dev/null 2>&1 &",
        "_ds_w=$!",
        # Deferred while the command runs: the wrapper outlives a Ctrl-C from the terminal and
        # reports the command's own status. The command itself gets default actions on exec.
        "trap : HUP INT QUIT",
        command_line(argv),
        "_ds_s=$?",
        "kill $_ds_w 2>/dev/null",
        "exit $_ds_s",
    ]
    script = "\n".join(lines)
    return f"exec /bin/sh -c {shlex.quote(script)} distsvc-{token}"


def kill_command(token: str, signal_name: str, instead: str | None = None) -> str:
    """The command line that ends the tree of the wrapper holding `token`.

    SIGNAL first; whatever is left after KILL_GRACE seconds (a background job ignores SIGINT,
    for one) gets SIGTERM, then SIGKILL. With `instead`, shell that hands the signal to the
    command another way (srun's job: `scancel --signal`) runs first, in place of SIGNAL to
    the tree, which still gets SIGTERM and SIGKILL for what is left.
    """
    if not re.fullmatch(r"[A-Z0-9]+", signal_name) or not re.fullmatch(r"[0-9a-f]+", token):
        raise ValueError("bad signal name or token")
    # Signal 0 sends nothing: ds_end only waits KILL_GRACE for `instead` to end the tree.
    first = "0" if instead is not None else signal_name
    steps = " ".join(dict.fromkeys([first, "TERM", "KILL"]))
    script = _END_TREE + (
        f"w=$(ps -A -ww -o pid= -o args= | awk '$NF == \"distsvc-{token}\" {{ print $1; exit }}')\n"
        + (f'[ -n "$w" ] && {{ {instead}\n}}\n' if instead is not None else "")
        + f'[ -n "$w" ] && ds_end "$w" {steps}\n'
        "exit 0")
    return f"exec /bin/sh -c {shlex.quote(script)} distsvc-kill"


def probe_command(custom: str | None) -> str:
    import distsvc.probe

    return custom if custom else distsvc.probe.PROBE_SCRIPT


def login_shell_argv() -> list[str]:
    """For distsvc-shell: the user's login shell on the host, started as a login shell."""
    return ["/bin/sh", "-c", 'exec "${SHELL:-/bin/sh}" -l']
