"""The run client's message loop over a real unix socket pair, the daemon's side scripted."""

from __future__ import annotations

import socket

import distsvc.actions.client
import distsvc.actions.relay
import distsvc.adapters.unix
import distsvc.protocol


def test_messages_that_arrive_in_one_read_are_all_taken() -> None:
    """"started" and "exit" of a fast command often arrive in one read: the exit status must
    not wait in the reader's buffer for a wake-up that never comes."""
    ours, daemons = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, daemons:
        daemons.sendall(distsvc.protocol.encode({"type": "started", "host": "h1", "job": 1})
                        + distsvc.protocol.encode({"type": "notice", "message": "hello"})
                        + distsvc.protocol.encode({"type": "exit", "status": 7}))
        notices: list[str] = []
        with distsvc.actions.relay.SignalCatcher() as signals:
            status = distsvc.actions.client._follow(ours, signals, False, notices.append)
    assert (status, notices) == (7, ["hello"])


def test_a_terminal_that_cannot_go_raw_fails_with_its_own_error() -> None:
    """The terminal can hang up between the client's isatty and the "started" message: the
    error is tcgetattr's, not one of undoing a raw mode that was never set."""
    import os
    import termios

    import pytest

    saved = os.dup(0)
    read_end, write_end = os.pipe()  # fd 0 a pipe: tcgetattr fails as on a hung-up terminal
    os.dup2(read_end, 0)
    ours, daemons = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with ours, daemons:
            daemons.sendall(distsvc.protocol.encode({"type": "started", "host": "h1"}))
            with distsvc.actions.relay.SignalCatcher() as signals, pytest.raises(termios.error):
                distsvc.actions.client._follow(ours, signals, True, lambda _: None)
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)


class _AnsweredBeforeSendReturns(socket.socket):
    """The client's end of the connection to a daemon that, as on a loaded machine where the
    client waits for a CPU, reads the whole request, runs the command (its output goes to the
    passed fds, not this socket), answers and closes its end, all before the client's
    sendmsg() call has returned to it."""

    daemons: socket.socket

    def sendmsg(self, *args: object) -> int:
        sent: int = super().sendmsg(*args)  # type: ignore[arg-type]
        reader = distsvc.adapters.unix.Reader(self.daemons)
        request = reader.receive()
        reader.close_fds()
        assert request is not None and request["type"] == "run"
        self.daemons.sendall(distsvc.protocol.encode({"type": "started", "host": "h1", "job": 1})
                             + distsvc.protocol.encode({"type": "exit", "status": 7}))
        self.daemons.close()
        return sent


def test_a_request_the_daemon_took_whole_and_ran_is_not_taken_back() -> None:
    """A request sent whole is the daemon's: the command may have run. The client once sent
    the request's bytes after the first sendmsg() with sendall() even when none were left,
    and a send of nothing fails with EPIPE once the daemon has closed its end: `carry` then
    said the daemon did not take the request, and `distsvc-run` ran the command again with
    the full client (seen as a command's output twice in the soak test, under load)."""
    plain, daemons = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours = _AnsweredBeforeSendReturns(fileno=plain.detach())
    ours.daemons = daemons
    with ours, daemons:
        request = {"type": "run", "argv": ["true"], "environ": {}, "cwd": "/",
                   "heartbeats": True}
        with distsvc.actions.relay.SignalCatcher() as signals:
            status = distsvc.actions.client.carry(ours, request, [0, 1, 2], signals, False,
                                                  lambda _: None)
    assert status == 7
