"""The run client's message loop over a real unix socket pair, the daemon's side scripted."""

from __future__ import annotations

import socket

import distsvc.actions.client
import distsvc.actions.relay
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
