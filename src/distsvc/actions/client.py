"""The client side of the daemon: find it safely, ask it, run through it, or start one.

Never hangs and never fails only because the daemon is absent: with no daemon answering
(no systemd, units not enabled, a stale socket), the caller falls back to doing the work
in-process, and a daemon is started in the background for the next commands.

DISTSVC_DAEMON selects the mode: `auto` (the default, as above), `off` (never ask a daemon,
never start one) and `required` (only through a daemon: when none answers, the command fails
with status 255 instead of falling back; the tests of the daemon path use it, so a silent
fallback can never make them pass).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import distsvc.actions.relay
import distsvc.adapters.terminal
import distsvc.adapters.unix
import distsvc.config
import distsvc.errors
import distsvc.protocol

if TYPE_CHECKING:
    import distsvc.actions.run

CONNECT_TIMEOUT = 0.5
ANSWER_TIMEOUT = 15.0  # a cold start through socket activation, then a probe round
START_TIMEOUT = 60.0  # choosing, connecting and falling back over several hosts


class Unavailable(Exception):
    """No daemon answered, or it speaks another protocol version: do it in-process."""


def enabled(environ: Mapping[str, str]) -> bool:
    return environ.get("DISTSVC_DAEMON", "auto") != "off"


def required(environ: Mapping[str, str]) -> bool:
    return environ.get("DISTSVC_DAEMON", "auto") == "required"


def fall_back(environ: Mapping[str, str], why: Unavailable) -> None:
    """Called where a caller is about to work without the daemon: refuses in `required` mode."""
    if required(environ):
        raise distsvc.errors.CannotRun(
            f"no daemon answered ({why}), and DISTSVC_DAEMON=required forbids working without "
            "one (start it: systemctl --user start distsvc.socket, or distsvc daemon)")


def spawn(environ: Mapping[str, str]) -> None:
    """Start a daemon in the background; if another one wins the lock, it exits by itself."""
    import subprocess

    if not enabled(environ) or required(environ):
        return

    with contextlib.suppress(OSError):
        subprocess.Popen(
            [sys.executable, "-m", "distsvc", "daemon"], env=dict(environ),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True, cwd="/")


def connect(environ: Mapping[str, str]) -> socket.socket:
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


def _answer_or_raise(message: dict[str, Any] | None) -> dict[str, Any]:
    if message is None:
        raise distsvc.errors.CannotRun("the daemon closed the connection without an answer")
    if message.get("ok") is False:
        text = str(message.get("error", "unknown error"))
        if text.startswith("bad request"):
            raise Unavailable(text)  # e.g. a daemon of another version: work without it
        error = distsvc.errors.DistsvcError(text)
        error.exit_status = int(message.get("status", 1))
        raise error
    return message


def query(request: dict[str, Any], environ: Mapping[str, str],
          timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
    """One request, one answer. Raises Unavailable when no daemon answers."""
    sock = connect(environ)
    try:
        sock.settimeout(timeout)
        try:
            distsvc.adapters.unix.send(sock, request)
            message = distsvc.adapters.unix.Reader(sock).receive()
        except (OSError, distsvc.protocol.ProtocolError) as error:
            raise Unavailable(f"daemon did not answer: {error}") from None
        return _answer_or_raise(message)
    finally:
        sock.close()


def run(argv: Sequence[str], options: distsvc.actions.run.Options,
        config: distsvc.config.Config, env: Mapping[str, str], workdir: str, term: str,
        terminal: bool, environ: Mapping[str, str], notice: Callable[[str], None]) -> int:
    """Run argv through the daemon: it gets our stdin, stdout and stderr as file descriptors
    and relays them over its warm SSH connection; we pass on signals and resizes. With
    `terminal`, ours goes into raw mode once the command has started."""
    sock = connect(environ)
    devnull = None
    try:
        stdin_fd = 0
        if not options.stdin:
            devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            stdin_fd = devnull
        request = {
            "type": "run", "config": distsvc.config.to_mapping(config), "argv": list(argv),
            "env": dict(env), "workdir": workdir, "term": term, "tty": options.tty,
            "stdin": options.stdin, "quiet": options.quiet,
            "ssh_auth_sock": environ.get("SSH_AUTH_SOCK", ""),
        }
        with distsvc.actions.relay.SignalCatcher() as signals:
            try:
                distsvc.adapters.unix.send(sock, request, fds=[stdin_fd, 1, 2])
            except OSError as error:
                raise Unavailable(f"daemon did not take the request: {error}") from None
            return _follow(sock, signals, terminal, notice)
    finally:
        sock.close()
        if devnull is not None:
            os.close(devnull)


def _follow(sock: socket.socket, signals: distsvc.actions.relay.SignalCatcher,
            terminal: bool, notice: Callable[[str], None]) -> int:
    reader = distsvc.adapters.unix.Reader(sock)
    sock.settimeout(5.0)
    deadline = time.monotonic() + START_TIMEOUT
    started = False
    with contextlib.ExitStack() as stack:
        while True:
            for signum in signals.take():
                event: dict[str, Any] = ({"type": "resize"} if signum == signal.SIGWINCH
                                         else {"type": "signal", "signal": signum})
                with contextlib.suppress(OSError):
                    distsvc.adapters.unix.send(sock, event)
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
                    raise distsvc.errors.CannotRun(f"lost the daemon: {error}") from None
                if message is None:
                    if not started:
                        raise Unavailable("the daemon closed the connection before starting")
                    raise distsvc.errors.CannotRun(
                        "the daemon went away; the command is ended on its host")
                kind = message.get("type")
                if kind == "notice":
                    notice(str(message.get("message", "")))
                elif kind == "started":
                    if terminal and not started:
                        stack.enter_context(distsvc.adapters.terminal.raw_mode(0))
                    started = True
                elif kind == "exit":
                    status: int = message.get("status", 255)
                    return status
                else:
                    if not started:
                        _answer_or_raise(message)
                    raise distsvc.errors.CannotRun(str(message.get("error", message)))
            elif not started and time.monotonic() > deadline:
                raise distsvc.errors.CannotRun(
                    f"the daemon did not start the command within {START_TIMEOUT:g} s")
