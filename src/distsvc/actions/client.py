"""The client side of the daemon: find it safely, ask it, run through it, or start one.

Never hangs and never fails only because the daemon is absent: with no daemon answering
(no systemd, units not enabled, a stale socket), the caller falls back to doing the work
in-process, and a daemon is started in the background for the next commands.

The fast path (`run_fast`, for `distsvc-run CMD ARGS` with no options) sends the daemon only
what this process knows (argv, cwd, the raw environment, the fds), and the daemon does the rest
(configuration, environment filtering, the working directory): this module therefore imports
almost nothing at module level (os, sys, select, time, and the light distsvc modules: events,
unix, paths, protocol, errors; terminal with a terminal); tests/test_fast_client_e2e.py keeps
the set exact.

DISTSVC_DAEMON selects the mode: `auto` (the default, as above), `off` (never ask a daemon,
never start one) and `required` (only through a daemon: when none answers, the command fails
with status 255 instead of falling back; the tests of the daemon path use it, so a silent
fallback can never make them pass).
"""

from __future__ import annotations

import os
import select
import sys
import time

import distsvc
import distsvc.actions.events
import distsvc.adapters.unix
import distsvc.errors
import distsvc.paths
import distsvc.protocol

TYPE_CHECKING = False  # typing costs the fast path ~3 ms at run time; mypy knows the name
if TYPE_CHECKING:
    import _socket
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    import distsvc.actions.run
    import distsvc.adapters.terminal
    import distsvc.config

CONNECT_TIMEOUT = 0.5
ANSWER_TIMEOUT = 15.0  # a cold start through socket activation, then a probe round
START_TIMEOUT = 60.0  # choosing, connecting and falling back over several hosts


class Unavailable(Exception):
    """No daemon answered, or it speaks another protocol version: do it in-process."""


MODES = ("auto", "off", "required")


def mode(environ: Mapping[str, str]) -> str:
    """DISTSVC_DAEMON's value; a misspelt one is refused rather than read as `auto` (which
    would quietly fall back where the user asked for `required`)."""
    value = environ.get("DISTSVC_DAEMON", "auto") or "auto"
    if value not in MODES:
        raise distsvc.errors.UsageError(
            f"DISTSVC_DAEMON={value}: not a mode (use {', '.join(MODES)}, or unset it)")
    return value


def enabled(environ: Mapping[str, str]) -> bool:
    return mode(environ) != "off"


def required(environ: Mapping[str, str]) -> bool:
    return mode(environ) == "required"


def fall_back(environ: Mapping[str, str], why: Unavailable) -> None:
    """Called where a caller is about to work without the daemon: refuses in `required` mode."""
    if required(environ):
        raise distsvc.errors.CannotRun(
            f"no daemon answered ({why}), and DISTSVC_DAEMON=required forbids working without "
            "one (start it: systemctl --user start distsvc.socket, or distsvc daemon)")


def spawn(environ: Mapping[str, str]) -> None:
    """Start a daemon in the background; if another one wins the lock, it exits by itself.

    Its stderr goes to the daemon log in the user's state directory (paths.daemon_log), after
    a line that marks this start: a daemon that cannot start says why there, and `distsvc
    status` shows it. The daemon keeps the file under distsvc.log.LOG_LIMIT bytes.
    """
    import contextlib
    import subprocess

    import distsvc.log

    if not enabled(environ) or required(environ):
        return
    log_path = distsvc.paths.daemon_log(environ)
    with contextlib.suppress(OSError):
        log_fd = distsvc.log.open_daemon_log(log_path, f"started by pid {os.getpid()}")
        try:
            subprocess.Popen(
                [sys.executable, "-m", "distsvc", "daemon", "--log-file", str(log_path)],
                env=dict(environ), stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                start_new_session=True, close_fds=True, cwd="/")
        finally:
            os.close(log_fd)


def _identified(request: dict[str, Any]) -> dict[str, Any]:
    """The request with our identity: a daemon of another installation retires."""
    return {"client": distsvc.identity(), **request}


def connect(environ: Mapping[str, str]) -> _socket.socket:
    path = distsvc.adapters.unix.find_socket(environ)
    if path is None:
        raise Unavailable("no daemon socket")
    try:
        sock = distsvc.adapters.unix.connect(path, CONNECT_TIMEOUT)
    except OSError as error:
        raise Unavailable(f"daemon socket {path}: {error.strerror or error}") from None
    # The daemon checks us; we check it too: our stdin, stdout, stderr and environment are
    # about to be handed over.
    if distsvc.adapters.unix.peer_credentials(sock)[1] != os.getuid():
        sock.close()
        raise Unavailable(f"daemon socket {path} is served by another user")
    return sock


def answer_or_raise(message: dict[str, Any] | None) -> dict[str, Any]:
    if message is None:
        raise distsvc.errors.CannotRun("the daemon closed the connection without an answer")
    if message.get("ok") is False:
        text = str(message.get("error", "unknown error"))
        if text.startswith("bad request"):
            raise Unavailable(text)  # e.g. a daemon of another version: work without it
        if message.get("full_client") is True:
            raise Unavailable(text)  # the fast path's request: the full client takes over
        error = distsvc.errors.DistsvcError(text)
        error.exit_status = int(message.get("status", 1))
        raise error
    return message


def knows_no_clusters(error: distsvc.errors.DistsvcError) -> bool:
    """Whether a cluster `run`'s refusal is that of a daemon older than the `cluster` field
    (it read the request as a run on hosts, of which it was sent none): nothing ran."""
    return type(error) is distsvc.errors.DistsvcError and \
        error.message == distsvc.protocol.NO_HOSTS


def query(request: dict[str, Any], environ: Mapping[str, str],
          timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
    """One request, one answer. Raises Unavailable when no daemon answers."""
    sock = connect(environ)
    try:
        sock.settimeout(timeout)
        try:
            distsvc.adapters.unix.send(sock, _identified(request))
            message = distsvc.adapters.unix.Reader(sock).receive()
        except (OSError, distsvc.protocol.ProtocolError) as error:
            raise Unavailable(f"daemon did not answer: {error}") from None
        return answer_or_raise(message)
    finally:
        sock.close()


def run_request(argv: Sequence[str], options: distsvc.actions.run.Options,
                config: distsvc.config.Config, env: Mapping[str, str], workdir: str, term: str,
                environ: Mapping[str, str], host: str | None = None) -> dict[str, Any]:
    """The `run` request for argv; with `host`, pinned to that host (no choosing)."""
    import distsvc.config

    request = {
        "type": "run", "config": distsvc.config.to_mapping(config), "argv": list(argv),
        "env": dict(env), "workdir": workdir, "term": term, "tty": options.tty,
        "stdin": options.stdin, "quiet": options.quiet,
        "ssh_auth_sock": environ.get("SSH_AUTH_SOCK", ""), "heartbeats": True,
    }
    if host is not None:
        request["host"] = host
    return request


def run(argv: Sequence[str], options: distsvc.actions.run.Options,
        config: distsvc.config.Config, env: Mapping[str, str], workdir: str, term: str,
        terminal: bool, environ: Mapping[str, str], notice: Callable[[str], None],
        cluster: Mapping[str, Any] | None = None) -> int:
    """Run argv through the daemon: it gets our stdin, stdout and stderr as file descriptors
    and relays them over its warm SSH connection; we pass on signals and resizes. With
    `terminal`, ours goes into raw mode once the command has started. `cluster`: the
    request's `cluster` and `limits` fields (`distsvc-run --on`, see protocol.py)."""
    sock = connect(environ)
    devnull = None
    try:
        stdin_fd = 0
        if not options.stdin:
            devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            stdin_fd = devnull
        request = {**run_request(argv, options, config, env, workdir, term, environ),
                   **(cluster or {})}
        with distsvc.actions.events.SignalCatcher() as signals:
            return carry(sock, request, [stdin_fd, 1, 2], signals, terminal, notice)
    finally:
        sock.close()
        if devnull is not None:
            os.close(devnull)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_fast(argv: Sequence[str], environ: Mapping[str, str]) -> int | None:
    """`distsvc-run CMD ARGS` (no options) through the daemon: the command's status, or None
    when the full client must do it (no daemon answering, or one of another version, or the
    daemon's answer that it cannot do it from the environment alone: a configuration error,
    no hosts, an unreadable saved environment). None only while nothing ran.

    The daemon reads the configuration the environment names (XDG_CONFIG_HOME, HOME,
    DISTSVC_HOSTS), filters the environment and picks the working directory ($PWD when it
    is the current directory); see protocol.py.
    """
    if not enabled(environ):
        return None
    try:
        cwd = os.getcwd()
        sock = connect(environ)
    except (OSError, Unavailable):
        return None
    request = {"type": "run", "argv": list(argv), "environ": dict(environ), "cwd": cwd,
               "heartbeats": True}
    terminal = os.isatty(0) and os.isatty(1)
    try:
        with distsvc.actions.events.SignalCatcher() as signals:
            try:
                return carry(sock, request, [0, 1, 2], signals, terminal, _stderr)
            except Unavailable:
                if (signum := signals.terminating()) is not None:
                    return 128 + signum  # asked to stop before anything started
                return None
    finally:
        sock.close()


def carry(sock: _socket.socket, request: dict[str, Any], fds: Sequence[int],
          events: distsvc.actions.events.EventQueue, terminal: bool,
          notice: Callable[[str], None],
          started: Callable[[str], None] = lambda host: None) -> int:
    """Send a `run` request with its stdin, stdout and stderr `fds` on a connected `sock`,
    pass on the signals queued in `events`, and return the command's status.

    `started(host)` is called when the daemon starts it. Raises Unavailable while nothing
    ran (the caller may work without the daemon), CannotRun after that.
    """
    try:
        distsvc.adapters.unix.send(sock, _identified(request), fds=list(fds))
    except (OSError, distsvc.protocol.ProtocolError) as error:  # e.g. a huge environment
        raise Unavailable(f"daemon did not take the request: {error}") from None
    return _follow(sock, events, terminal, notice, request["argv"], started)


def _raw_mode(fd: int) -> distsvc.adapters.terminal.raw_mode:
    import distsvc.adapters.terminal  # only with a terminal (termios, tty)

    return distsvc.adapters.terminal.raw_mode(fd)


def _follow(sock: _socket.socket, signals: distsvc.actions.events.EventQueue,
            terminal: bool, notice: Callable[[str], None], argv: Sequence[str] = (),
            on_started: Callable[[str], None] = lambda host: None) -> int:
    """Pass signals on and wait for the command's status.

    Liveness: a daemon that sends heartbeats (every ~2 s) and then falls silent for
    HEARTBEAT_SILENCE seconds died or hangs (SIGSTOP, a deadlock): we give it up with status
    255 instead of waiting for it. (A daemon that sends none is of an older version: only its
    start of the command is bounded, by START_TIMEOUT.) Once we close the connection, a
    daemon that resumes treats it as a hang-up and ends the command; one that died lost its
    SSH connections, so the remote wrapper ends it on the host.
    """
    reader = distsvc.adapters.unix.Reader(sock)
    sock.settimeout(5.0)
    deadline = time.monotonic() + START_TIMEOUT
    started = False
    beating = False
    host = "its host"
    last_heard = time.monotonic()

    def gone(how: str, when: str = "") -> distsvc.errors.CannotRun:
        what = distsvc.protocol.describe_command(list(argv)) if argv else "the command"
        if not started:
            return distsvc.errors.CannotRun(f"the daemon {how} before {what} started")
        return distsvc.errors.CannotRun(
            f"the daemon {how} while {what} ran on {host}; the command is ended there{when}")

    raw: distsvc.adapters.terminal.raw_mode | None = None
    try:
        while True:
            for signum in signals.take():
                event: dict[str, Any] = (
                    {"type": "resize"} if signum == distsvc.actions.events.SIGWINCH
                    else {"type": "signal", "signal": signum})
                try:
                    distsvc.adapters.unix.send(sock, event)
                except OSError:
                    pass  # the daemon is gone: the next read says so
            # Messages already read with an earlier one ("started" and "exit" often come in
            # one read) are taken first: the socket will not wake select() for them.
            ready = [sock.fileno()] if reader.pending else select.select(
                [sock.fileno(), signals.fileno()], [], [], 1.0)[0]
            if sock.fileno() in ready:
                try:
                    message = reader.receive()
                except (OSError, distsvc.protocol.ProtocolError) as error:
                    if not started:  # nothing ran: do it without the daemon
                        raise Unavailable(f"the daemon dropped the request: {error}") from None
                    raise gone("went away") from None
                if message is None:
                    if not started:
                        raise Unavailable("the daemon closed the connection before starting")
                    raise gone("went away")
                last_heard = time.monotonic()
                kind = message.get("type")
                if kind == "heartbeat":
                    beating = True
                elif kind == "notice":
                    notice(str(message.get("message", "")))
                elif kind == "started":
                    if terminal and not started:
                        mode = _raw_mode(0)
                        mode.__enter__()
                        raw = mode  # only once it is on: a failed start has nothing to undo
                    started = True
                    host = str(message.get("host") or host)
                    on_started(host)
                elif kind == "exit":
                    status: int = message.get("status", 255)
                    return status
                else:
                    if not started:
                        answer_or_raise(message)
                    raise distsvc.errors.CannotRun(str(message.get("error", message)))
            elif beating and time.monotonic() - last_heard > distsvc.protocol.HEARTBEAT_SILENCE:
                raise gone(f"stopped answering (nothing for "
                           f"{distsvc.protocol.HEARTBEAT_SILENCE:g} s)",
                           " once the daemon resumes or its connection drops")
            elif not started and time.monotonic() > deadline:
                raise distsvc.errors.CannotRun(
                    f"the daemon did not start the command within {START_TIMEOUT:g} s")
    finally:
        if raw is not None:
            raw.__exit__()
