"""The socket under a connection's paramiko Transport (adapters/ssh/sock.py), over a socket
pair: what it reads ahead comes out whole and in order, close() ends a wait at once, and its
descriptor is closed by whoever is last to use it."""

from __future__ import annotations

import os
import random
import socket
import threading
from collections.abc import Callable

import pytest

from distsvc.adapters.ssh.sock import READ_AHEAD, TransportSocket


def _pair() -> tuple[TransportSocket, socket.socket]:
    ours, theirs = socket.socketpair()
    return TransportSocket(ours), theirs


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run `call` in a thread; its result or exception lands in the list."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as error:  # handed to the test
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_reads_of_any_size_give_back_every_byte_in_order() -> None:
    """paramiko reads a packet as a small first block and then the rest; one recv of the
    socket serves many such reads, and what is left over is never lost or reordered."""
    sock, theirs = _pair()
    sent = random.Random(9).randbytes(3 * READ_AHEAD + 12345)
    writer, _ = _in_thread(lambda: theirs.sendall(sent))
    sock.settimeout(10.0)
    got = bytearray()
    sizes = random.Random(1)
    while len(got) < len(sent):
        chunk = sock.recv(sizes.choice((16, 1, 4096, 32768 + 20, READ_AHEAD * 2)))
        assert chunk
        got += chunk
    assert bytes(got) == sent
    writer.join(10)
    theirs.close()
    assert sock.recv(16) == b""  # the end, as a socket says it
    sock.close()


def test_a_wait_times_out_as_a_socket_with_a_timeout_does() -> None:
    sock, theirs = _pair()
    sock.settimeout(0.01)
    with pytest.raises(TimeoutError):  # socket.timeout, which paramiko's reader loops on
        sock.recv(16)
    sock.close()
    theirs.close()


def test_close_ends_a_wait_for_ever_and_the_last_user_closes_the_descriptor() -> None:
    """paramiko closes the socket from another thread while its transport thread waits; the
    wait ends at once (the end of the stream), and the descriptor is closed only once that
    thread is out, so no other file's descriptor is ever polled."""
    before = _fds()
    sock, theirs = _pair()
    sock.settimeout(None)
    thread, outcome = _in_thread(lambda: sock.recv(16))
    while sock._inside == 0:  # the reader is in its wait
        threading.Event().wait(0.01)
    sock.close()
    thread.join(30)
    assert not thread.is_alive() and outcome == [b""]
    assert sock._closed
    theirs.close()
    assert _fds() == before
    assert sock.recv(16) == b""  # closed: the end, again
    with pytest.raises(OSError):
        sock.send(b"x")  # paramiko's writer reads an OSError as the end


def test_a_closed_idle_socket_releases_its_descriptor_at_once() -> None:
    before = _fds()
    sock, theirs = _pair()
    assert _fds() == before + 2  # the pair: no descriptor of its own
    sock.close()
    sock.close()
    theirs.close()
    assert _fds() == before


def test_send_sends_and_waits_for_room() -> None:
    sock, theirs = _pair()
    sock.settimeout(10.0)
    payload = b"y" * (4 * READ_AHEAD)
    reader, received = _in_thread(lambda: b"".join(iter(lambda: theirs.recv(65536), b"")))
    sent = 0
    while sent < len(payload):
        sent += sock.send(payload[sent:])
    sock.close()
    reader.join(30)
    assert received == [payload]
    theirs.close()
