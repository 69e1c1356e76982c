"""The relay gives the memory of a large stream back (adapters.memory) once it is over."""

from __future__ import annotations

import os
import threading

import pytest

import distsvc.actions.relay as relay
import distsvc.adapters.memory


class Stream:
    """A command that writes `size` bytes of stdout in 64 KiB pieces, then exits 0: the
    relay's Process seam, without SSH."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.ready_r, self.ready_w = os.pipe()
        os.write(self.ready_w, b"x")  # always readable: there is always more, or the end

    def fileno(self) -> int:
        return self.ready_r

    def read_stdout(self) -> bytes:
        piece = min(self.left, 65536)
        self.left -= piece
        return bytes(piece)

    def read_stderr(self) -> bytes:
        return b""

    def write(self, data: bytes) -> None:
        pass

    def close_stdin(self) -> None:
        pass

    def resize(self, columns: int, rows: int) -> None:
        pass

    def finished(self) -> bool:
        return self.left == 0

    def exit_status(self) -> int:
        return 0

    def connection_lost(self) -> bool:
        return False

    def abandon(self) -> None:
        pass

    def close(self) -> None:
        os.close(self.ready_r)
        os.close(self.ready_w)


def relayed(size: int) -> int:
    """Relay `size` bytes into a pipe read to its end by a thread; the bytes it read."""
    process = Stream(size)
    read_fd, write_fd = os.pipe()
    received = [0]

    def reader() -> None:
        while data := os.read(read_fd, 1 << 20):
            received[0] += len(data)

    thread = threading.Thread(target=reader)
    thread.start()
    events = relay.EventQueue()
    try:
        assert relay.relay(process, (None, write_fd, write_fd), None, lambda _: None,
                           events) == 0
    finally:
        os.close(write_fd)
        thread.join()
        os.close(read_fd)
        events.close_pipe()
        process.close()
    return received[0]


@pytest.mark.parametrize(("size", "releases"), [(relay.RELEASE_AFTER, 1), (1 << 20, 0)])
def test_memory_is_given_back_after_a_large_stream_only(
        monkeypatch: pytest.MonkeyPatch, size: int, releases: int) -> None:
    calls = []
    monkeypatch.setattr(distsvc.adapters.memory, "release_free_memory",
                        lambda: calls.append(1))
    assert relayed(size) == size
    assert len(calls) == releases


def test_release_free_memory_works_here() -> None:
    """glibc here (malloc_trim found); elsewhere it must at least do nothing quietly."""
    distsvc.adapters.memory.release_free_memory()
    assert distsvc.adapters.memory._libc() is not None
