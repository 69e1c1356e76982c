"""A session's stdout written to its reader by the transport thread (adapters/ssh/direct.py),
against a real OpenSSH server: every byte in order however the reader keeps up, and a reader
that stops holds the server back by the SSH window, not by the daemon's memory."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import helpers
import sshbed
from test_ssh_e2e import _connection

PIPE_SIZE = 65536


def _relayed(connection: Any, command: str, monkeypatch: pytest.MonkeyPatch
             ) -> tuple[int, threading.Thread, list[Any], list[int], list[int]]:
    """`command` relayed in a thread to a small pipe: (its read end, the thread, the sinks
    made, the bytes each packet's delivery handed the sink, the relay's status)."""
    import distsvc.actions.relay as relay
    from distsvc.adapters.ssh.direct import Sink

    sinks: list[Sink] = []
    fed: list[int] = []
    make, feed = type(connection).sink, Sink.feed

    def sink(self: Any, channel: Any, fd: int) -> Sink:
        sinks.append(make(self, channel, fd))
        return sinks[-1]

    def counted_feed(self: Sink, data: bytes) -> None:
        fed.append(len(data))
        feed(self, data)

    monkeypatch.setattr(type(connection), "sink", sink)
    monkeypatch.setattr(Sink, "feed", counted_feed)
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    process = connection.open(command)
    statuses: list[int] = []
    events = relay.EventQueue()

    def relaying() -> None:
        try:
            statuses.append(relay.relay(process, (None, write_fd, write_fd), None,
                                        lambda _: None, events))
        finally:
            process.close()
            os.close(write_fd)
            events.close_pipe()

    thread = threading.Thread(target=relaying)
    thread.start()
    return read_fd, thread, sinks, fed, statuses


def test_every_byte_arrives_in_order_through_a_reader_that_falls_behind_now_and_then(
        bed: sshbed.Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader pauses every few reads, so delivery keeps switching from the transport
    thread's writes to the channel's buffer (drained by the relay) and back. The relay reads
    the buffer a pipe's worth at a time, so it often holds nothing while older bytes are still
    buffered: the transport thread must not write then."""
    from distsvc.adapters.ssh.channels import RemoteProcess

    read_stdout = RemoteProcess.read_stdout
    monkeypatch.setattr(RemoteProcess, "read_stdout",
                        lambda self, limit=PIPE_SIZE: read_stdout(self, PIPE_SIZE))
    connection = _connection(bed, tmp_path, monkeypatch)
    try:
        read_fd, thread, sinks, _, statuses = _relayed(connection, "seq 1 4000000",
                                                       monkeypatch)
        chunks = []
        while data := os.read(read_fd, 1 << 16):
            chunks.append(data)
            if len(chunks) % 64 == 0:
                time.sleep(0.2)  # the pipe fills, then the buffer, up to the SSH window
        os.close(read_fd)
        thread.join()
        expected = "".join(f"{n}\n" for n in range(1, 4000001)).encode()
        assert statuses == [0]
        assert b"".join(chunks) == expected
        # Both ways were taken: written by the transport thread, and buffered for the relay.
        assert len(sinks) == 1 and 0 < sinks[0].written < len(expected)
    finally:
        connection.close()


def test_a_reader_that_stops_holds_the_server_back_by_the_window(
        bed: sshbed.Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody reads a 256 MiB stream: what reaches this side stays within the pipe, the
    relay's backlog and the SSH window; then the reader takes all of it."""
    import distsvc.actions.relay as relay
    from distsvc.adapters.ssh.channels import WINDOW_SIZE

    size = 256 << 20
    connection = _connection(bed, tmp_path, monkeypatch)
    try:
        read_fd, thread, _, fed, statuses = _relayed(
            connection, f"head -c {size} /dev/zero", monkeypatch)
        try:
            helpers.wait_for(lambda: sum(fed) > 0, 30, "output to arrive")
            last = -1
            for _ in range(60):  # until two looks a second apart agree: the stream stalled
                time.sleep(1.0)
                if sum(fed) == last:
                    break
                last = sum(fed)
            # 1 MiB: what one read of the relay takes beyond its backlog.
            bound = PIPE_SIZE + relay.BACKLOG + (1 << 20) + WINDOW_SIZE
            assert 0 < sum(fed) <= bound
            received = 0
            while data := os.read(read_fd, 1 << 20):
                received += len(data)
        finally:
            os.close(read_fd)  # a failed test's relay then ends too (its writes fail)
            thread.join()
        assert statuses == [0] and received == size
    finally:
        connection.close()
