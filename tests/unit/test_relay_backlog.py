"""The relay waits on the command's output again as soon as a stalled reader took its backlog."""

from __future__ import annotations

import fcntl
import os
import threading
from typing import Any

import pytest
from test_relay_memory import Stream  # always ready, 64 KiB a read, the relay's Process seam

import distsvc.actions.relay as relay
import distsvc.polling

PIECE = 65536
PIPE_SIZE = 2 * PIECE


def test_a_reader_that_caught_up_gets_output_without_waiting_out_a_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader stalls until the relay is BACKLOG behind, then reads everything. The flush
    that then empties the backlog must leave the relay waiting on the command's output; it
    waited only on its events, for select's timeout (1 s), while the SSH window was spent
    (a 200 MiB stream took from 1.2 to 10 s)."""
    monkeypatch.setattr(relay, "BACKLOG", PIECE // 2)
    process = Stream(1 << 20)
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    behind = threading.Event()
    idle_waits = []  # waits on nothing but events, output still to come

    wait = distsvc.polling.wait

    def watched_wait(reading: list[int], writing: list[int], timeout: float) -> Any:
        if process.fileno() not in reading and not process.finished():
            if writing:
                behind.set()  # the relay waits for the reader: let it read
            else:
                idle_waits.append(reading)
        return wait(reading, writing, timeout)

    monkeypatch.setattr(distsvc.polling, "wait", watched_wait)
    events = relay.EventQueue()
    statuses = []

    def relaying() -> None:  # the relay in a thread, the stalled reader here
        try:
            statuses.append(relay.relay(process, (None, write_fd, write_fd), None,
                                        lambda _: None, events))
        finally:
            os.close(write_fd)  # the end of output for the reader, whatever happened

    thread = threading.Thread(target=relaying)
    thread.start()
    assert behind.wait(30)
    received = 0
    while data := os.read(read_fd, 1 << 20):
        received += len(data)
    thread.join()
    os.close(read_fd)
    events.close_pipe()
    assert statuses == [0] and received == 1 << 20
    assert idle_waits == []
