"""The TCP socket under a connection's paramiko Transport: it sleeps until there is something
to do, and reads ahead.

Why. paramiko gives its socket a 0.1 s timeout and its transport thread loops on
socket.timeout, only to look at a few flags between reads: the transport closed, a rekey a
sender asked for, a keepalive due. So every warm connection woke 10 times a second, and a
daemon holding 1,000 of them woke 10,000 times a second, each wake taking the interpreter
lock: idle, it used a third of a CPU, and a `best` query that needs under a millisecond took
25 ms (docs/benchmarks.md, issue 9). Here the thread sleeps in poll(2) on the socket, with a
timeout of a minute once the connection is authenticated (`settimeout`; the handshake keeps
paramiko's 0.1 s, which its banner and handshake timeouts count on), and each of those flags
wakes it instead:

- a close (paramiko's Transport.close and the thread's own end both close their socket):
  shutdown(2) first, which makes a poll or recv in another thread return at once, so the
  thread ends now rather than at its next timeout;
- a rekey asked by a sender (paramiko sets the flag after 512 MiB sent and only the transport
  thread starts the key exchange): the sender also asks the server for a reply, whose arrival
  wakes the thread (channels._wake_on_flags: no descriptor of its own, where a wake pipe or
  eventfd would double the daemon's descriptors per connection, against a usual limit of 1,024);
- a keepalive set with Transport.set_keepalive (distsvc asks for replies from the pool's
  watcher instead): `every(interval)` bounds the wait by it.

Reading ahead. paramiko reads a packet in two recv calls (its first block, then the rest),
and a socket with a timeout polls before each, so a 32 KiB packet of a stream cost two poll
and two recv system calls. Here one non-blocking recv of up to READ_AHEAD bytes serves the
packets that have arrived, and poll is called only when nothing has. Nothing else reads the
descriptor (paramiko touches its socket only through recv, send, settimeout, close and
getpeername), so no byte can be missed behind the buffer; `fileno` is deliberately absent.

The socket is closed by close() if no thread is inside a call that uses it, else by the last
such thread on its way out, so its number is never polled after it was closed (and perhaps
reused by another file).
"""

from __future__ import annotations

import math
import select
import socket
import threading

# Enough for several 32 KiB packets (OpenSSH's, and ours) per system call; 256 KiB is under
# the loopback socket's receive buffer, so a stream's backlog is taken in a few calls.
READ_AHEAD = 256 * 1024


class TransportSocket:
    """A connected TCP socket as paramiko's Packetizer uses one (recv, send, settimeout,
    close), reading ahead and waking on close as described in the module's docstring."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        sock.setblocking(False)
        self._timeout: float | None = None  # of one wait, as socket.settimeout's
        self._interval: float | None = None  # a keepalive's, which bounds each wait
        self._buffer = b""
        self._offset = 0  # what of _buffer recv has handed out
        self._lock = threading.Lock()
        self._closing = False
        self._inside = 0  # threads in a call that uses the descriptor
        # One poller per direction: the transport thread reads while another thread sends,
        # and a poll object may not be polled by two threads at once.
        self._readable = select.poll()
        self._readable.register(sock.fileno(), select.POLLIN)
        self._writable = select.poll()
        self._writable.register(sock.fileno(), select.POLLOUT)

    # --- paramiko's side ---------------------------------------------------------------

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes: buffered ones, else what one recv brings; b"" at the end or
        once closed. Raises socket.timeout (TimeoutError) when the wait timed out, as a
        socket with a timeout would."""
        if self._offset < len(self._buffer):
            return self._take(size)
        if not self._enter():
            return b""
        try:
            while True:
                try:
                    data = self._sock.recv(max(size, READ_AHEAD))
                    break
                except BlockingIOError:
                    pass
                if not self._readable.poll(self._wait_ms()):
                    raise TimeoutError("timed out")
        finally:
            self._leave()
        if len(data) <= size:
            return data
        self._buffer, self._offset = data, 0
        return self._take(size)

    def send(self, data: bytes) -> int:
        """Bytes of `data` sent, at least one unless the wait for room timed out (then
        socket.timeout, which paramiko's writer retries on until the transport closes)."""
        if not self._enter():
            raise BrokenPipeError("closed")
        try:
            try:
                return self._sock.send(data)
            except BlockingIOError:
                pass
            if not self._writable.poll(self._wait_ms()):
                raise TimeoutError("timed out")
            return self._sock.send(data)  # BlockingIOError (EAGAIN): paramiko retries
        finally:
            self._leave()

    def settimeout(self, timeout: float | None) -> None:
        """How long one recv or send waits (None: for ever); paramiko sets 0.1 s, the
        connection a long one once authenticated."""
        self._timeout = timeout

    def close(self) -> None:
        """Shut the connection down, waking any thread waiting on it; the descriptor goes
        now, or when the last thread using it leaves (see the module's docstring)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            idle = self._inside == 0
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected any more: nothing waits on it
        if idle:
            self._sock.close()

    @property
    def _closed(self) -> bool:
        # paramiko's Transport.stop_thread reads this socket.socket attribute.
        return self._closing

    def getpeername(self) -> tuple[str, int]:
        address: tuple[str, int] = self._sock.getpeername()
        return address

    # --- distsvc's side ------------------------------------------------------------------

    def every(self, interval: float) -> None:
        """Wait no longer than `interval` seconds at a time (0: no bound): a keepalive's."""
        self._interval = interval or None

    # --- internals -------------------------------------------------------------------------

    def _take(self, size: int) -> bytes:
        start = self._offset
        self._offset = min(start + size, len(self._buffer))
        chunk = self._buffer[start:self._offset]
        if self._offset == len(self._buffer):
            self._buffer, self._offset = b"", 0
        return chunk

    def _wait_ms(self) -> int:
        waits = [t for t in (self._timeout, self._interval) if t is not None]
        return math.ceil(min(waits) * 1000) if waits else -1

    def _enter(self) -> bool:
        with self._lock:
            if self._closing:
                return False
            self._inside += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self._inside -= 1
            last = self._closing and self._inside == 0
        if last:
            self._sock.close()
