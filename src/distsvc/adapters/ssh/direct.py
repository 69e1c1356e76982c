"""A session's stdout written to its reader by the connection's transport thread.

Why. paramiko's transport thread puts each packet's data in the channel's buffer (a lock, a
condition's notify, the event behind the channel's fileno set), and the relay thread wakes,
takes it out again (the lock again, a copy) and writes it to the client's descriptor: a
thread hand-off per 32 KiB packet, both threads taking turns at the interpreter lock. A
200 MiB stream cost the daemon about 1.05 s of CPU, OpenSSH's ControlMaster 0.6-0.7 s. Here
the transport thread writes the data straight to the reader's (non-blocking) descriptor and
gives the server the window back for what the reader took.

What holds:
- Flow control: the window is credited only for bytes the reader's descriptor took. What it
  does not take goes into the channel's buffer as before, and writing directly stops; the
  relay drains the buffer, crediting the window as it reads (paramiko's recv), so a slow
  reader holds the server back by the window, as before.
- Order: data is written directly only while the buffer is empty and the relay holds nothing
  unwritten (`resume`, called by the relay), and the switch from writing to buffering and
  back happens under one lock, the one every packet's delivery takes.
- The descriptor is written only until `close`, which the relay calls before it closes it.
"""

from __future__ import annotations

import contextlib
import os
import threading

import paramiko
from paramiko.common import cMSG_CHANNEL_WINDOW_ADJUST


class Sink:
    """Where one channel's stdout goes: the reader's descriptor `fd` (non-blocking) while it
    keeps up and the relay says so (`resume`), else the channel's buffer."""

    def __init__(self, channel: paramiko.Channel, fd: int) -> None:
        self.channel = channel
        self.fd = fd
        self.written = 0  # bytes the descriptor took from the transport thread
        self._lock = threading.Lock()
        self._direct = False  # writing to fd; else buffering for the relay
        self._closed = False

    def feed(self, data: bytes) -> None:
        """A packet's data (in the transport thread): to the reader, or what it does not take
        now to the buffer, which the relay then drains."""
        with self._lock:
            if not self._direct:
                self.channel.in_buffer.feed(data)
                return
            try:
                taken = os.write(self.fd, data)
            except OSError:  # full (EAGAIN), or gone (EPIPE...): the relay meets it itself
                taken = 0
            self.written += taken
            if taken < len(data):
                self._direct = False
                self.channel.in_buffer.feed(data[taken:])
        if taken:
            self._credit(taken)

    def resume(self) -> None:
        """Write directly again, if nothing older waits in the buffer (called by the relay
        when it holds no unwritten output of its own)."""
        with self._lock:
            if not self._closed and len(self.channel.in_buffer) == 0:
                self._direct = True

    def close(self) -> int:
        """Never write to the descriptor again; the bytes written to it."""
        with self._lock:
            self._direct = False
            self._closed = True
            return self.written

    def _credit(self, size: int) -> None:
        # As paramiko's Channel.recv does for what the relay reads; an adjustment is due only
        # once a good part of the window was used.
        channel = self.channel
        ack = channel._check_add_window(size)  # type: ignore[attr-defined]
        if ack > 0:
            message = paramiko.Message()
            message.add_byte(cMSG_CHANNEL_WINDOW_ADJUST)
            message.add_int(channel.remote_chanid)
            message.add_int(ack)
            # From the transport thread: during a rekey it is queued until the rekey's end
            # (channels.defer_own_sends_during_rekey). A failure means a connection ending.
            with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
                channel.transport._send_user_message(message)  # type: ignore[union-attr]
