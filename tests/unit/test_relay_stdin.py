"""A stdin of /dev/null is end-of-file at once: the relay closes the command's stdin without
a StdinPump thread (actions/relay.py)."""

from __future__ import annotations

import os

import pytest
from test_relay_memory import Stream  # the relay's Process seam, without SSH

import distsvc.actions.relay as relay


def test_dev_null_as_stdin_is_end_of_file_without_a_pump(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`cmd < /dev/null`: the command's stdin is closed at once; no StdinPump thread."""
    pumps: list[object] = []
    monkeypatch.setattr(relay, "StdinPump", lambda *args: pumps.append(args))
    closed: list[bool] = []
    process = Stream(10)
    monkeypatch.setattr(process, "close_stdin", lambda: closed.append(True))
    events = relay.EventQueue()
    read_fd, write_fd = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        assert relay.relay(process, (null, write_fd, write_fd), None, lambda _: None,
                           events) == 0
    finally:
        for fd in (null, write_fd, read_fd):
            os.close(fd)
        events.close_pipe()
        process.close()
    assert closed == [True] and pumps == []


def test_other_stdins_get_a_pump() -> None:
    read_fd, write_fd = os.pipe()
    zero = os.open("/dev/zero", os.O_RDONLY)
    try:
        assert relay._reads_nothing(read_fd) is False
        assert relay._reads_nothing(zero) is False
        null = os.open(os.devnull, os.O_RDONLY)
        assert relay._reads_nothing(null) is True
        os.close(null)
        assert relay._reads_nothing(null) is False  # closed: a pump finds out as before
    finally:
        for fd in (read_fd, write_fd, zero):
            os.close(fd)
