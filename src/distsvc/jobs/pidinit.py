"""Run a command in a PID namespace of its own, keeping its exit status and signal.

    python3 -I -S pidinit.py [--user-namespace] -- CMD [ARG...]

systemd 252 has no PrivatePIDs= (257 has), so a job's PID namespace is made inside its unit,
by this program as the unit's main process. `unshare --pid --fork --mount-proc` would do the
namespaces, but the command would be the namespace's PID 1, and the kernel drops every signal
a PID 1 has no handler for when it is sent from inside its namespace: `sh -c 'kill -TERM $$'`
lives on and exits 0. So three processes, as a container runtime's init does it:

- this process (the unit's main process, outside the namespace) makes the namespaces: a
  user namespace first when `--user-namespace` is given (an unprivileged user needs one it
  owns to make the others; the user's own uid and gid map to themselves), then the PID and
  mount namespaces, with mounts made private so nothing propagates back. It forks
- the init (PID 1 inside): mounts a /proc of the namespace (so `ps` shows only the job), forks
- the command (PID 2), which gets default signal dispositions and is exec'd.

The init reaps every orphan, and when the command ends it writes the command's wait status to
a pipe and exits, which ends whatever the command left in the namespace (the kernel kills
them with their PID 1). This process then ends the same way as the command did: the same exit
status, or death by the same signal (raised at itself, core dumps off), so systemd records
exit codes and signals as if the command were its main process.

Signals: systemd signals every process of the unit (KillUnit who=all; KillMode=control-group
on stop), so the command gets each signal directly. This process and the init catch and
ignore the ones whose default would end them, so the command's own end decides the status;
SIGKILL ends everything (the init dies with its parent: PR_SET_PDEATHSIG).

Only the standard library, and no distsvc import: it starts with `-I -S` in ~20 ms.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
EXIT_NO_NAMESPACE = 125
"""Our status when the namespaces cannot be made (the command never ran)."""

FAULTS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP,
          signal.SIGABRT, signal.SIGSYS}
UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def make_namespaces(user_namespace: bool) -> None:
    """Put this process in new user (optional), PID (for its children) and mount namespaces."""
    if user_namespace:
        uid, gid = os.geteuid(), os.getegid()
        _check(_libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _check(_libc.unshare(CLONE_NEWPID | CLONE_NEWNS), "unshare(CLONE_NEWPID|CLONE_NEWNS)")
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")


def _ignore_ending_signals() -> None:
    for number in range(1, signal.SIGRTMAX + 1):
        if number in FAULTS or number in UNCATCHABLE or number == signal.SIGCHLD:
            continue
        try:
            signal.signal(number, lambda *_: None)
        except (OSError, ValueError):
            pass  # numbers the C library reserves (32, 33)


def _default_signals() -> None:
    for number in range(1, signal.SIGRTMAX + 1):
        if number not in UNCATCHABLE:
            try:
                signal.signal(number, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _command(argv: list[str]) -> None:
    _default_signals()
    try:
        os.execvp(argv[0], argv)
    except OSError as error:
        os.write(2, f"{argv[0]}: {error.strerror}\n".encode())
        os._exit(127 if error.errno == errno.ENOENT else 126)


def _init(argv: list[str], report: int) -> None:
    """PID 1 of the namespace: /proc, the command, reaping; its wait status to `report`."""
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _check(_libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
               "mounting /proc")
        _ignore_ending_signals()
        child = os.fork()
        if child == 0:
            _command(argv)
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == child:
                os.write(report, str(status).encode())
                os._exit(0)
    except OSError as error:
        os.write(2, f"distsvc: cannot start the job's PID namespace: {error}\n".encode())
        os._exit(EXIT_NO_NAMESPACE)


def _end_like(status: int) -> None:
    """Exit as a process with wait status `status` did."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        if number not in UNCATCHABLE:
            signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [number])
        os.kill(os.getpid(), number)
        os._exit(128 + number)  # not reached
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def main(args: list[str]) -> None:
    user_namespace = "--user-namespace" in args[:args.index("--")] if "--" in args else False
    argv = args[args.index("--") + 1:] if "--" in args else []
    if not argv:
        os.write(2, b"usage: pidinit.py [--user-namespace] -- CMD [ARG...]\n")
        os._exit(2)
    _ignore_ending_signals()
    try:
        make_namespaces(user_namespace)
    except OSError as error:
        os.write(2, f"distsvc: cannot make the job's PID namespace: {error}\n".encode())
        os._exit(EXIT_NO_NAMESPACE)
    read_end, write_end = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(read_end)
        _init(argv, write_end)
    os.close(write_end)
    said = b""
    while chunk := os.read(read_end, 64):
        said += chunk
    _pid, init_status = os.waitpid(init, 0)
    _end_like(int(said) if said.isdigit() else init_status)


if __name__ == "__main__":
    main(sys.argv[1:])
