"""A `run` client's signals and resizes as relay events, read by one thread for every client.

While its command runs, a client may send `signal` and `resize` messages, and its hang-up
(the connection ends) is SIGHUP. One thread per run read them before; 100 concurrent runs
then meant 100 more threads to start (~100 us of CPU each) and to schedule. Now one watcher
thread waits on every run's connection with epoll and reads each one's messages without
blocking (a message that is only partly in waits in the connection's decoder), so no
client can hold up another. The watcher ends, closing its epoll descriptor, once no run
has been watched for IDLE_WAIT seconds; the next run starts another.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import threading

import distsvc.actions.relay
import distsvc.daemon.context
import distsvc.protocol

IDLE_WAIT = 5.0  # the watcher with nothing to watch ends after this long


class ClientEvents(distsvc.actions.relay.EventQueue):
    """Signals and resizes a `run` client sends, as relay events; its hang-up is SIGHUP.

    Watched from its creation until close(), which the handler calls when it is done: after
    it, nothing is read or added, and the wake-up pipe is closed (the watcher adds under
    `lock`, so never to a closed pipe).
    """

    def __init__(self, peer: distsvc.daemon.context.Peer) -> None:
        super().__init__()
        self.peer = peer
        self.lock = threading.Lock()
        self.closed = False
        self.fd = peer.sock.fileno()
        _watch(self)

    def add(self, signum: int) -> None:
        with self.lock:
            if not self.closed:
                super().add(signum)

    def read_ready(self) -> bool:
        """Take what the client sent so far (the watcher, under `lock`, when its connection
        is readable); False when the connection ended: it is watched no more."""
        queue = super().add  # the lock is held
        while True:
            try:
                message = self.peer.reader.receive(socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True  # nothing more yet (or the rest of a message still to come)
            except (OSError, distsvc.protocol.ProtocolError):
                message = None
            if message is None:
                queue(signal.SIGHUP)  # the client is gone: as if its terminal hung up
                return False
            if message.get("type") == "resize":
                queue(signal.SIGWINCH)
            elif message.get("type") == "signal" and message.get("signal") in (
                    signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                queue(message["signal"])

    def close(self) -> None:
        """The handler is done with the events. It closes the connection after this, so the
        watcher, which reads under `lock`, never reads a closed (or reused) descriptor."""
        _unwatch(self)
        with self.lock:
            self.closed = True
            self.close_pipe()


class _Watcher:
    """The watcher thread's state: the epoll set and what each of its descriptors is."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.watched: dict[int, ClientEvents] = {}


_lock = threading.Lock()
_watcher: _Watcher | None = None


def _watch(events: ClientEvents) -> None:
    global _watcher
    with _lock:
        if _watcher is None:
            _watcher = _Watcher()
            threading.Thread(target=_run, args=(_watcher,), daemon=True,
                             name="client-events").start()
        _watcher.watched[events.fd] = events
        try:
            _watcher.epoll.register(events.fd, select.EPOLLIN | select.EPOLLRDHUP)
        except FileExistsError:  # a descriptor number seen before, not yet forgotten
            _watcher.epoll.modify(events.fd, select.EPOLLIN | select.EPOLLRDHUP)


def _unwatch(events: ClientEvents) -> None:
    with _lock:
        if _watcher is not None and _watcher.watched.get(events.fd) is events:
            del _watcher.watched[events.fd]
            with contextlib.suppress(OSError):
                _watcher.epoll.unregister(events.fd)


def _run(watcher: _Watcher) -> None:
    global _watcher
    while True:
        ready = watcher.epoll.poll(IDLE_WAIT)
        if not ready:
            with _lock:
                if not watcher.watched:
                    _watcher = None
                    watcher.epoll.close()
                    return
            continue
        for fd, _mask in ready:
            with _lock:
                events = watcher.watched.get(fd)
            if events is None:
                continue  # unwatched since the poll
            with events.lock:
                if events.closed:
                    continue
                try:
                    watching = events.read_ready()
                except Exception:  # one client's bad message must not stop the watcher
                    distsvc.actions.relay.EventQueue.add(events, signal.SIGHUP)
                    watching = False
            if not watching:
                _unwatch(events)
