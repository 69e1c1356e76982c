"""A `run` client's messages become relay events, read by one watcher thread for every
client (daemon/client_events.py), over real unix socket pairs."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

import distsvc.adapters.unix
import distsvc.daemon.client_events as client_events
import distsvc.daemon.context
import distsvc.protocol
from helpers import wait_for

Connect = Callable[[], "tuple[socket.socket, client_events.ClientEvents]"]


def _watchers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "client-events"]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """connect() -> (client socket, ClientEvents of the daemon's end); all closed after."""
    made: list[tuple[socket.socket, client_events.ClientEvents]] = []

    def make() -> tuple[socket.socket, client_events.ClientEvents]:
        client, daemon_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        peer = distsvc.daemon.context.Peer(
            daemon_end, distsvc.adapters.unix.Reader(daemon_end), os.getpid(), os.getuid())
        events = client_events.ClientEvents(peer)
        made.append((client, events))
        return client, events

    yield make
    for client, events in made:
        if not events.closed:
            events.close()
        events.peer.close()
        client.close()


def _taken(events: client_events.ClientEvents, count: int) -> list[int]:
    taken: list[int] = []

    def enough() -> bool:
        wait_for(lambda: events.received, 30, "an event")
        taken.extend(events.take())
        return len(taken) >= count

    wait_for(enough, 30, f"{count} events")
    return taken


def test_signals_resizes_and_a_hang_up_become_events(connect: Connect) -> None:
    client, events = connect()
    distsvc.adapters.unix.send(client, {"type": "signal", "signal": signal.SIGINT})
    distsvc.adapters.unix.send(client, {"type": "resize"})
    distsvc.adapters.unix.send(client, {"type": "signal", "signal": signal.SIGKILL})  # ignored
    distsvc.adapters.unix.send(client, {"type": "signal", "signal": signal.SIGTERM})
    assert _taken(events, 3) == [signal.SIGINT, signal.SIGWINCH, signal.SIGTERM]
    client.close()  # the client is gone: as if its terminal hung up
    assert _taken(events, 1) == [signal.SIGHUP]


def test_a_message_sent_in_pieces_waits_without_holding_up_other_clients(
        connect: Connect) -> None:
    slow, slow_events = connect()
    fast, fast_events = connect()
    frame = distsvc.protocol.encode({"type": "signal", "signal": signal.SIGQUIT})
    slow.sendall(frame[:3])
    distsvc.adapters.unix.send(fast, {"type": "signal", "signal": signal.SIGINT})
    assert _taken(fast_events, 1) == [signal.SIGINT]
    assert slow_events.received == []
    slow.sendall(frame[3:])
    assert _taken(slow_events, 1) == [signal.SIGQUIT]
    assert len(_watchers()) == 1  # one thread for every client


def test_a_bad_frame_is_a_hang_up(connect: Connect) -> None:
    client, events = connect()
    client.sendall(b"\0\0\0\x05nope!")
    assert _taken(events, 1) == [signal.SIGHUP]


def test_nothing_is_added_after_close_and_the_watcher_ends_when_idle(
        connect: Connect, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_events, "IDLE_WAIT", 0.2)
    wait_for(lambda: not _watchers(), 30, "an earlier watcher to end")
    client, events = connect()
    assert len(_watchers()) == 1
    events.close()  # the handler is done: its pipe is closed, nothing more is read
    distsvc.adapters.unix.send(client, {"type": "signal", "signal": signal.SIGINT})
    client.close()
    wait_for(lambda: not _watchers(), 30, "the idle watcher to end")
    assert events.received == []
    _, again = connect()  # the next run starts another
    assert len(_watchers()) == 1
    again.close()
