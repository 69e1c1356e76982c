"""Running one command as if it ran here: on the best host, or locally with no hosts."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import distsvc.actions.client
import distsvc.actions.relay
import distsvc.adapters.terminal
import distsvc.config
import distsvc.environment
import distsvc.errors
import distsvc.paths

# distsvc.actions.placement and distsvc.remote are imported where used: a client whose daemon
# does the work never loads them (~20 ms of its start-up, see docs/benchmarks.md).

if TYPE_CHECKING:  # importing it for real would load paramiko
    import distsvc.adapters.ssh


@dataclasses.dataclass(frozen=True)
class Options:
    workdir: str | None = None  # None: the current directory
    tty: bool | None = None  # None: a terminal when stdin and stdout are terminals
    stdin: bool = True  # False: like `ssh -n`, the command reads end-of-file
    quiet: bool = False  # no notices on stderr (but a refused host key is always said)


def notice(options: Options, message: str) -> None:
    if not options.quiet:
        print(message, file=sys.stderr, flush=True)


def current_directory(environ: Mapping[str, str], cwd: str | None = None) -> str:
    """The working directory as the user sees it: $PWD keeps symlinked paths when it is right.

    `cwd`: the process's own (default: ours); a daemon passes its client's."""
    cwd = os.getcwd() if cwd is None else cwd
    logical = environ.get("PWD", "")
    with contextlib.suppress(OSError):
        if logical and os.path.isabs(logical) and os.path.samefile(logical, cwd):
            return logical
    return cwd


def command_setting(config: distsvc.config.Config, environ: Mapping[str, str],
                    cwd: str | None = None) -> tuple[dict[str, str], str, str]:
    """What a command on a host gets from the environment `environ` of a process whose
    directory is `cwd` (default: ours): the variables that travel (the config's allow/deny,
    then the saved ones), the directory and TERM. The full client decides it here, the
    daemon for the fast one (daemon/run_setting.py): one rule for both."""
    saved = distsvc.environment.load_saved(distsvc.paths.saved_environment_file(environ))
    return (distsvc.environment.carried(environ, config.env, saved),
            current_directory(environ, cwd), environ.get("TERM") or "xterm")


def wants_terminal(options: Options, fds: tuple[int, int, int] = (0, 1, 2)) -> bool:
    if options.tty is not None:
        return options.tty and os.isatty(fds[0])
    return options.stdin and os.isatty(fds[0]) and os.isatty(fds[1])


def run_locally(argv: Sequence[str], options: Options, environ: Mapping[str, str]) -> int:
    import distsvc.adapters.local

    notice(options, "distsvc: no hosts configured; running on this machine")
    env = dict(environ)
    env.update(distsvc.environment.load_saved(distsvc.paths.saved_environment_file(environ)))
    return distsvc.adapters.local.run(argv, options.workdir, env)


def warn(message: str) -> None:
    """What the user hears even with --quiet."""
    print(message, file=sys.stderr, flush=True)


def execute(sessions: distsvc.adapters.ssh.Sessions, argv: Sequence[str],
            options: Options, env: Mapping[str, str], workdir: str, term: str,
            events: distsvc.actions.relay.EventQueue, warn: Callable[[str], None],
            fds: tuple[int, int, int] = (0, 1, 2), own_terminal: bool = True,
            reader_pid: int | None = None,
            kill: Callable[[str, str], str] | None = None) -> int:
    """Run argv on a host under the remote wrapper; the command's status.

    `fds` are the stdin, stdout and stderr to relay (a daemon passes its client's). With a
    terminal, raw mode is set here only when `own_terminal` (a daemon's client sets its own).
    `warn` says what the user must hear even with --quiet (a signal that could not be sent).
    `kill(token, SIGNAL)` is the command line that delivers a signal (default:
    remote.kill_command). Raises HostUnreachable when nothing ran (the caller may try
    another host), CannotRun (StartUncertain among them) when the command may have run.
    """
    import distsvc.remote

    kill = kill or distsvc.remote.kill_command

    if (signum := events.terminating()) is not None:
        return 128 + signum  # asked to stop before anything started
    token = distsvc.remote.new_token()
    terminal = wants_terminal(options, fds)
    script = distsvc.remote.environment_script(env).encode()
    if terminal:
        status, _ = sessions.run(distsvc.remote.env_file_writer(token), stdin=script)
        if status != 0:
            raise distsvc.errors.HostUnreachable(
                sessions.label, "could not store the environment in $TMPDIR")
    size = distsvc.adapters.terminal.window_size(fds[0]) if terminal else (80, 24)
    try:
        process = sessions.open(distsvc.remote.wrapper(argv, workdir, token, terminal,
                                                       sessions.label),
                                term=term if terminal else None, size=size)
    except distsvc.errors.HostUnreachable:
        if terminal:  # the environment file holds secrets: do not leave it behind
            with contextlib.suppress(Exception):
                sessions.run(f'rm -f "{distsvc.remote.env_file(token)}"', timeout=5.0)
        raise

    abandoned: list[str] = []

    def deliver(signum: int) -> None:
        """Send the signal on a session of its own (any connection with room, or a new one);
        when no session can be had, close the command's own channel instead."""
        name = signal.Signals(signum).name
        try:
            sessions.run(kill(token, name.removeprefix("SIG")), timeout=15.0)
        except (distsvc.errors.DistsvcError, TimeoutError, OSError, EOFError) as error:
            reason = error.message if isinstance(error, distsvc.errors.DistsvcError) else (
                str(error) or type(error).__name__)
            warn(f"distsvc: could not deliver {name} to the command on {sessions.label} "
                 f"({reason}); closing its session instead")
            abandoned.append(name)
            events.add(distsvc.actions.relay.ABANDON)

    streams = (fds[0] if options.stdin else None, fds[1], fds[2])
    terminal_fd = fds[0] if terminal else None
    with contextlib.ExitStack() as stack:
        stack.callback(process.close)
        if not terminal:
            process.write(script)
        if terminal and own_terminal:
            stack.enter_context(distsvc.adapters.terminal.raw_mode(fds[0]))
        try:
            status = distsvc.actions.relay.relay(process, streams, terminal_fd, deliver, events,
                                                 reader_pid)
        except distsvc.actions.relay.OutputClosed:
            # Whoever read our output is gone (`| head`): end the command as SIGPIPE would.
            deliver(signal.SIGPIPE)
            return 128 + signal.SIGPIPE
    if status == distsvc.actions.relay.STATUS_CONNECTION_LOST and abandoned:
        raise distsvc.errors.CannotRun(
            f"{sessions.label}: {abandoned[0]} could not be delivered, so the command's session "
            "was closed; its state is unknown (it is ended on the host within a few seconds)")
    if status == distsvc.actions.relay.STATUS_CONNECTION_LOST and process.connection.silent:
        raise distsvc.errors.CannotRun(
            f"{sessions.label}: the host stopped answering (no reply for "
            f"{distsvc.adapters.ssh.KEEPALIVE_TIMEOUT:g} s), so its connection was closed; the "
            "command's state is unknown (it is ended there once the host answers again)")
    if status == distsvc.actions.relay.STATUS_CONNECTION_LOST:
        raise distsvc.errors.CannotRun(
            f"{sessions.label}: connection lost; the command's state is unknown "
            "(it is ended on the host within a few seconds)")
    return status


def run(argv: Sequence[str], options: Options, config: distsvc.config.Config,
        environ: Mapping[str, str]) -> int:
    """Run argv on the best host (falling back to the next ones), or here with no hosts."""
    if not config.hosts:
        return run_locally(argv, options, environ)
    env, workdir, term = command_setting(config, environ)
    workdir = options.workdir or workdir
    if distsvc.actions.client.enabled(environ):
        try:
            return distsvc.actions.client.run(
                argv, options, config, env, workdir, term, wants_terminal(options), environ,
                warn)  # the daemon already left out what --quiet silences
        except distsvc.actions.client.Unavailable as why:
            distsvc.actions.client.fall_back(environ, why)
            distsvc.actions.client.spawn(environ)  # for the next commands; this one goes on
    return run_in_process(argv, options, config, env, workdir, term, environ)


def run_in_process(argv: Sequence[str], options: Options, config: distsvc.config.Config,
                   env: Mapping[str, str], workdir: str, term: str,
                   environ: Mapping[str, str]) -> int:
    """Without a daemon: measure, choose and run from this process."""
    import distsvc.adapters.ssh

    directory = distsvc.paths.state_dir(environ)
    pool = distsvc.adapters.ssh.Pool()
    try:
        with distsvc.actions.relay.SignalCatcher() as signals:
            return run_on_best(argv, options, config, env, workdir, term, directory, pool,
                               signals, lambda message: notice(options, message), warn=warn)
    finally:
        pool.close_all()


def run_on_best(argv: Sequence[str], options: Options, config: distsvc.config.Config,
                env: Mapping[str, str], workdir: str, term: str, directory: Path,
                pool: distsvc.adapters.ssh.Pool, signals: distsvc.actions.relay.EventQueue,
                say: Callable[[str], None], job_pid: int | None = None,
                fds: tuple[int, int, int] = (0, 1, 2),
                started: Callable[[str], None] = lambda host: None,
                reader_pid: int | None = None,
                warn: Callable[[str], None] | None = None, pinned: str | None = None) -> int:
    """Choose a host, falling back to the next ones while nothing ran, and run there.

    A command is tried on another host only when it provably did not start (no connection,
    the session or its start refused); once it may have started, a failure is reported and
    it is never run again. A daemon passes its client's pid and fds, and `started` to hear
    which host runs it. `say` is for notices --quiet silences, `warn` (default: `say`) for
    what the user must hear anyway (a refused host key, a signal not delivered). With
    `pinned` (a host's name: `run --all` runs on each), only there: nothing is chosen or
    probed, a host that cannot be reached is the command's failure, and it is connected
    before `started`.
    """
    import distsvc.actions.placement

    warn = warn or say
    tried: set[str] = set()
    while True:
        if pinned is None:
            choice = distsvc.actions.placement.choose(
                config, directory, tried, say, pool, signals.terminating, job_pid, warn)
        else:
            choice = distsvc.actions.placement.pin(
                config, pinned, directory, signals.terminating, job_pid)
        try:
            sessions = pool.sessions(choice.host, config.host_key_policy, config.connect_timeout)
            if pinned is not None:
                # Connected first: `run --all` leaves a host that does not answer behind when
                # a signal comes, and it must find nothing started when it does answer.
                pool.lease(sessions.target, config.connect_timeout).release()
                if (signum := signals.terminating()) is not None:
                    raise distsvc.errors.Interrupted(signum)
            started(choice.host.name)
            return execute(sessions, argv, options, env, workdir, term, signals, warn, fds,
                           own_terminal=job_pid is None, reader_pid=reader_pid)
        except distsvc.errors.HostUnreachable as error:
            refused = isinstance(error, distsvc.errors.HostKeyRefused)
            distsvc.actions.placement.mark_unreachable(
                directory, choice.host.name, error.reason, choice.placement, refused)
            if pinned is not None:
                raise
            tried.add(choice.host.name)
            (warn if refused else say)(f"distsvc: {error.message}; trying the next host")
        except (OSError, EOFError) as error:
            # paramiko's own words ("Socket is closed") say little: say what it means.
            raise distsvc.errors.CannotRun(
                f"{choice.host.name}: the connection failed while the command ran "
                f"({str(error) or type(error).__name__}); its state is unknown, so it is not "
                "run again (it is ended on the host within a few seconds)") from None
        finally:
            distsvc.actions.placement.release(directory, choice.placement)
