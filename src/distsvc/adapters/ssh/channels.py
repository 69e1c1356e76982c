"""Authenticated connections and the sessions on them: one command each, its channel closed
and its slot given back when it ends; refused, dead and uncertain starts told apart; a server
that stops answering noticed by keepalive requests."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paramiko
from paramiko.common import (
    MSG_CHANNEL_CLOSE,
    MSG_CHANNEL_DATA,
    MSG_NEWKEYS,
    cMSG_CHANNEL_CLOSE,
    cMSG_GLOBAL_REQUEST,
)
from paramiko.packet import Packetizer

import distsvc.config
import distsvc.errors
import distsvc.polling
from distsvc.adapters.ssh.direct import Sink
from distsvc.adapters.ssh.sock import TransportSocket

if TYPE_CHECKING:  # the handshake module makes connections: it imports this one
    from distsvc.adapters.ssh.handshake import Target

# Measured against OpenSSH 9.2 (docs/benchmarks.md): 4 MiB streams fastest. A much larger
# window lets sshd queue megabytes it then copies over and over (16 MiB ran 3x slower).
# A larger packet size buys nothing: sshd reads a command's output 32 KiB at a time and sends
# each read as one packet whatever the maximum.
WINDOW_SIZE = 4 * 1024 * 1024
MAX_PACKET_SIZE = 32768

# (AES-GCM first once lost streams of 512 MiB in paramiko's rekey: "Key-exchange timed out".
# The cause was not the cipher: such a stream ends as the rekey begins, and the server's close
# then arrived during it, answered by paramiko from its transport thread, which blocked; our
# close answers it now, and defer_own_sends_during_rekey covers the rest.)
# Asked for before paramiko's own order (aes*-ctr, then hmac-sha2-*): AES-GCM is an AEAD
# cipher that OpenSSH offers too, and it authenticates in the same pass as it decrypts, where
# CTR needs a separate HMAC-SHA2 over every packet computed in Python's hmac module; a stream
# through the daemon spent a quarter of its CPU on that. Encrypt-then-MAC first for the MACs
# a CTR cipher still needs (an older server): the same cost, and the MAC is checked before
# anything is decrypted. A paramiko without AES-GCM (before 3.3) keeps its own order.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
PREFERRED_MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com")


def _preferred(first: tuple[str, ...], offered: tuple[str, ...]) -> tuple[str, ...]:
    """`offered` (paramiko's list, in its order) with those of `first` it has moved to the
    front, in the order of `first`; nothing is added or removed."""
    front = tuple(name for name in first if name in offered)
    return front + tuple(name for name in offered if name not in front)


def new_transport(sock: Any, **options: Any) -> paramiko.Transport:
    """A paramiko Transport with distsvc's algorithm preferences (SSHClient.connect's
    transport_factory: it passes `sock` and its own keyword options); on a TransportSocket,
    what paramiko's transport thread looked at between reads wakes it (`_wake_on_flags`)."""
    transport = paramiko.Transport(sock, **options)
    security = transport.get_security_options()
    security.ciphers = _preferred(PREFERRED_CIPHERS, tuple(security.ciphers))
    security.digests = _preferred(PREFERRED_MACS, tuple(security.digests))
    if isinstance(sock, TransportSocket):
        _wake_on_flags(transport, sock)
    return transport


def _wake_on_flags(transport: paramiko.Transport, sock: TransportSocket) -> None:
    """The flags paramiko's transport thread polled for 10 times a second, made to wake it
    where they are set. A rekey a sender asks for (after 512 MiB sent; the thread's read loop
    starts the key exchange when it next reads a message or its wait ends): the sender also
    asks the server for a reply (a global request, which SSH servers must answer, OpenSSH with
    a refusal), and its arrival wakes the thread. A keepalive's interval (checked when a wait
    ends) bounds each wait. A close wakes it by itself (sock.TransportSocket.close)."""
    packetizer: Packetizer = transport.packetizer
    trigger_rekey = packetizer._trigger_rekey  # type: ignore[attr-defined]
    set_keepalive = packetizer.set_keepalive

    def rekey() -> None:
        trigger_rekey()  # within send_message, under its (reentrant) write lock
        # Another thread sends only through _send_user_message, holding clear_to_send_lock
        # with clear_to_send set: our KEXINIT is not out yet, so any message may still go.
        # (The transport thread itself reads on, and sees the flag.)
        if threading.current_thread() is not transport:
            nudge = paramiko.Message()
            nudge.add_byte(cMSG_GLOBAL_REQUEST)
            nudge.add_string("keepalive@openssh.com")
            nudge.add_boolean(True)
            packetizer.send_message(nudge)

    def keepalive(interval: float, callback: Callable[[], object]) -> None:
        set_keepalive(interval, callback)
        sock.every(interval)

    packetizer._trigger_rekey = rekey  # type: ignore[attr-defined]
    packetizer.set_keepalive = keepalive  # type: ignore[method-assign]

# OpenSSH's default MaxSessions: the sessions one connection carries before the server refuses
# the next. A server that refuses earlier teaches the pool its own limit.
SESSIONS_PER_CONNECTION = 10
# A connection carrying sessions is asked for a reply (an SSH global request) when it was not
# answered for KEEPALIVE_INTERVAL, and counted dead when no reply comes for KEEPALIVE_TIMEOUT:
# a frozen host's kernel still acknowledges TCP, so TCP keepalive alone never notices it.
KEEPALIVE_INTERVAL = 10.0
KEEPALIVE_TIMEOUT = 20.0
OPEN_TIMEOUT = 15.0  # for a session and its start to be confirmed by the server
# How long an authenticated connection's transport thread sleeps at most with nothing to do
# (paramiko: 0.1 s). What it woke for now wakes it (sock.py); this is only a backstop.
IDLE_WAKE = 60.0


def defer_own_sends_during_rekey(transport: paramiko.Transport) -> None:
    """Messages paramiko's transport thread sends itself while keys are being renegotiated
    wait until our NEWKEYS is out, instead of blocking the thread that does the renegotiating.

    During a rekey paramiko holds every non-kex message back (`_send_user_message` waits for
    `clear_to_send`), as SSH requires. But some messages are sent by the transport thread
    itself, from its handlers: the answer to a close of a channel not ours (a jump host's
    forwarding channel), the reply to a channel request that wants one (sshd's
    ClientAliveInterval keepalive). Received just after a rekey began (paramiko rekeys every
    512 MiB), such a message blocked the only thread that can finish the rekey: after 30 s
    "Key-exchange timed out waiting for key negotiation" ended the connection and every
    command on it (paramiko issue 822, open upstream). Here such a message is queued and sent
    when the server's NEWKEYS arrives (ours went out before it), before any other thread may
    send again, so the order of messages stays what paramiko meant."""
    queued: list[paramiko.Message] = []
    send_user_message = transport._send_user_message  # type: ignore[attr-defined]
    handlers = transport._handler_table  # type: ignore[attr-defined]
    # paramiko 3+ builds this table per transport, of bound methods. Up to 2.12 (Debian 12's)
    # it is one table in the class, whose handlers are called as handler(transport, message).
    per_transport = "_handler_table" in vars(transport)
    parse_newkeys = (handlers[MSG_NEWKEYS] if per_transport
                     else functools.partial(handlers[MSG_NEWKEYS], transport))

    def send(message: paramiko.Message) -> None:
        # Only the transport thread clears and sets clear_to_send: from it, the test holds.
        if threading.current_thread() is transport and not transport.clear_to_send.is_set():
            queued.append(message)
        else:
            send_user_message(message)

    def newkeys(message: paramiko.Message) -> None:
        while queued:
            transport._send_message(queued.pop(0))  # type: ignore[attr-defined]
        parse_newkeys(message)

    transport._send_user_message = send  # type: ignore[attr-defined]
    if per_transport:
        handlers[MSG_NEWKEYS] = newkeys
    else:  # a table of this transport's own, leaving the class's to other transports
        transport._handler_table = {  # type: ignore[attr-defined]
            **handlers, MSG_NEWKEYS: lambda _transport, message: newkeys(message)}


class Connection:
    """An authenticated SSH connection to one host, carrying up to `limit` sessions at once.

    A session is reserved (reserve()) before it is opened and released when its process is
    closed, so the count is exact however a command ends.
    """

    def __init__(self, target: Target, client: paramiko.SSHClient,
                 jump: Connection | None, limit: int = SESSIONS_PER_CONNECTION) -> None:
        self.target = target
        self.client = client
        self.jump = jump
        transport = client.get_transport()
        assert transport is not None
        self.transport: paramiko.Transport = transport
        self.limit = limit
        self.sessions = 0
        self.used = time.monotonic()
        self._lock = threading.Lock()
        self._closing: list[paramiko.Channel] = []  # closed by us, not yet by the server
        self.silent = False  # closed because the server stopped answering
        self._answered_at = time.monotonic()
        self._asked_at: float | None = None
        # Session channels opened here, and those of them the server closed before we did
        # (their answer, our close, is owed): see _closed_by_server.
        self._answers_lock = threading.Lock()
        self._ours: set[int] = set()
        self._owed: set[int] = set()
        handlers = dict(self.transport._channel_handler_table)  # type: ignore[attr-defined]
        self._paramiko_closed_by_server = handlers[MSG_CHANNEL_CLOSE]
        handlers[MSG_CHANNEL_CLOSE] = self._closed_by_server
        # Sessions whose stdout the transport thread writes to its reader (direct.Sink).
        self._sinks: dict[int, Sink] = {}
        self._paramiko_data = handlers[MSG_CHANNEL_DATA]
        handlers[MSG_CHANNEL_DATA] = self._data
        self.transport._channel_handler_table = handlers  # type: ignore[attr-defined]
        defer_own_sends_during_rekey(self.transport)
        if isinstance(self.transport.sock, TransportSocket):  # authenticated: no more timers
            self.transport.sock.settimeout(IDLE_WAKE)

    def reserve(self) -> bool:
        """Take one session slot, if the connection is alive and has one free."""
        with self._lock:
            if self.sessions >= self.limit or not self.alive():
                return False
            self.sessions += 1
            self.used = time.monotonic()
            return True

    def release(self, channel: paramiko.Channel | None = None) -> None:
        """Give a session slot back; `channel`, its closed channel, is kept until the server
        has closed it too (see _forget_finished_channels)."""
        with self._lock:
            self.sessions -= 1
            self.used = time.monotonic()
            if channel is not None:
                self._closing.append(channel)
        self._forget_finished_channels()

    def _forget_finished_channels(self) -> None:
        """paramiko remembers every channel id a transport ever had (`channels_seen`), so a
        connection that lives for weeks would grow by one entry per session. An id may go
        once the server has closed its channel too (the channel left `_channels`): no message
        for it can follow. Until then the channel object is held here, because `_channels`
        holds channels weakly, and a collected one would look closed too early: the server's
        late close for an id forgotten would then end the whole connection ("unknown
        channel")."""
        transport = self.transport
        with self._lock, transport.lock:
            live = transport._channels  # type: ignore[attr-defined]
            still_open = []
            for channel in self._closing:
                if live.get(channel.chanid) is channel:
                    still_open.append(channel)
                else:
                    transport.channels_seen.pop(channel.chanid, None)
            self._closing = still_open

    def _closed_by_server(self, channel: paramiko.Channel, message: paramiko.Message) -> None:
        """The server closed a channel: for one of our sessions, the channel is closed here but
        the answer (our own close) is left to close_channel().

        paramiko answers at once, from its transport thread, while another thread may hold a
        message it built before the close and sends after (the stdin pump's end-of-file, its
        data, a window adjustment): that message then follows the answer. OpenSSH frees a
        channel once it has both closes and ends the whole connection on a message for a
        channel it no longer has ("ieof packet referred to nonexistent channel 1"), so every
        other command on the connection was lost with it. close_channel() comes after every
        thread that sends on the session is done, so its answer is the channel's last message.
        (paramiko issue 1115: upstream open since 2017.)"""
        with self._answers_lock:
            ours = channel.chanid in self._ours
        if not ours:  # a jump host's forwarding channel: paramiko's own handling
            self._paramiko_closed_by_server(channel, message)
            return
        with channel.lock:
            if channel.active and not channel.closed:
                channel._set_closed()  # type: ignore[attr-defined]
                with self._answers_lock:
                    self._owed.add(channel.chanid)
            self.transport._unlink_channel(channel.chanid)  # type: ignore[attr-defined]

    def _data(self, channel: paramiko.Channel, message: paramiko.Message) -> None:
        """A session's stdout data (in the transport thread): to its sink if it has one."""
        sink = self._sinks.get(channel.chanid)
        if sink is None:
            self._paramiko_data(channel, message)
        else:
            sink.feed(message.get_binary())

    def sink(self, channel: paramiko.Channel, fd: int) -> Sink:
        """A sink for the channel's stdout to `fd` (see direct.py); it buffers until resumed,
        and close_channel() forgets it."""
        sink = Sink(channel, fd)
        self._sinks[channel.chanid] = sink
        return sink

    def close_channel(self, channel: paramiko.Channel) -> None:
        """Close a session's channel (and the pipe behind its fileno()), answering the
        server's close if it came first; call when no other thread sends on it any more."""
        sink = self._sinks.pop(channel.chanid, None)
        if sink is not None:
            sink.close()
        channel.close()  # sends our end-of-file and close, unless the server closed first
        with self._answers_lock:
            owed = channel.chanid in self._owed
            self._owed.discard(channel.chanid)
            self._ours.discard(channel.chanid)
        if owed:
            with channel.lock:
                channel.eof_sent = True  # nothing may follow the close, not even an EOF
            answer = paramiko.Message()
            answer.add_byte(cMSG_CHANNEL_CLOSE)
            answer.add_int(channel.remote_chanid)
            with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
                self.transport._send_user_message(answer)  # type: ignore[attr-defined]

    def check_answering(self, now: float) -> None:
        """Ask a connection that carries sessions for a reply now and then; close it when an
        answer is KEEPALIVE_TIMEOUT late, so its commands end as with a dropped connection.
        Called by the pool's watcher every few seconds."""
        with self._lock:
            if self._asked_at is not None:
                if now - self._asked_at <= KEEPALIVE_TIMEOUT:
                    return
                self.silent = True
            elif self.sessions == 0 or now - self._answered_at < KEEPALIVE_INTERVAL:
                return
            else:
                self._asked_at = now
        if self.silent:
            self.transport.close()
        else:
            threading.Thread(target=self._ask, daemon=True, name="keepalive").start()

    def _ask(self) -> None:
        # Any answer will do (OpenSSH refuses the request); paramiko waits for it, or for the
        # transport's end, which check_answering() brings about when it is too late.
        self.transport.global_request("keepalive@openssh.com", wait=True)
        with self._lock:
            self._answered_at = time.monotonic()
            self._asked_at = None

    def open(self, command: str, *, term: str | None = None, size: tuple[int, int] = (80, 24),
             timeout: float = OPEN_TIMEOUT, reserved: bool = False) -> RemoteProcess:
        """Start `command` on a session (`reserved`: one the caller took with reserve()); with
        `term`, on a pseudo-terminal of `size` (columns, rows). The slot is released when the
        process is closed, or here on failure.

        Raises SessionRefused when the server refused the session or the command's start
        (nothing ran: the caller may try another connection), HostUnreachable when the
        connection is dead or the host stopped answering before the command was sent (nothing
        ran), and StartUncertain when the command was sent but its start was never confirmed
        (it may be running: never retry it).
        """
        label = self.target.label
        if not reserved and not self.reserve():
            raise distsvc.errors.SessionRefused(
                label, f"all {self.limit} sessions of the connection are in use")
        channel = None
        try:
            try:
                channel = self._open_session(timeout)
            except paramiko.ChannelException:
                # OpenSSH refuses a session beyond MaxSessions: learn its limit.
                self.limit = max(1, self.sessions - 1)
                raise distsvc.errors.SessionRefused(
                    label, f"refused a session beyond {self.limit} on one connection") from None
            except (paramiko.SSHException, EOFError, OSError):
                if self.alive():
                    raise distsvc.errors.HostUnreachable(
                        label, f"no session within {timeout:g} s (the host stopped answering)"
                    ) from None
                raise distsvc.errors.HostUnreachable(label, "connection lost") from None
            with self._answers_lock:
                self._ours.add(channel.chanid)
            _replies_until(channel, time.monotonic() + timeout)
            try:
                if term is not None:
                    try:
                        channel.get_pty(term=term, width=size[0], height=size[1])
                    except (paramiko.SSHException, EOFError, OSError) as error:
                        raise self._failed(isinstance(error, _NoReply), "a pseudo-terminal",
                                           timeout) from None
                try:
                    channel.exec_command(command)
                except (paramiko.SSHException, EOFError, OSError) as error:
                    if isinstance(error, _NoReply) or not self.alive():
                        raise distsvc.errors.StartUncertain(
                            f"{label}: the connection failed while the command was starting; "
                            "it may have run, so it is not run again") from None
                    raise distsvc.errors.SessionRefused(
                        label, "refused to start the command") from None
            finally:
                vars(channel).pop("_wait_for_event", None)  # paramiko's own wait again
        except BaseException:
            if channel is not None:
                self.close_channel(channel)
            self.release(channel)
            raise
        return RemoteProcess(channel, self)

    def _open_session(self, timeout: float) -> paramiko.Channel:
        """A session channel; one the server refused is asked for once more before the refusal
        counts. sshd frees a finished session's slot only after handling every packet it read
        with our close, so a session opened right behind a close is refused at MaxSessions
        though a slot is free (about one time in two); by the time its refusal arrives, the
        slot is free.

        Raises ChannelException for a refusal (nothing ran): paramiko keeps the last refusal
        per connection, not per channel, so a refusal that another thread's open read first
        reaches us as a bare SSHException before the timeout, and counts as one."""
        for _ in range(2):
            started = time.monotonic()
            try:
                return self.transport.open_session(
                    window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE, timeout=timeout)
            except paramiko.ChannelException:
                pass
            except paramiko.SSHException:
                if not self.alive() or time.monotonic() - started >= timeout:
                    raise
        raise paramiko.ChannelException(2, "refused twice")  # SSH_OPEN_CONNECT_FAILED

    def _failed(self, expired: bool, what: str,
                timeout: float) -> distsvc.errors.HostUnreachable:
        label = self.target.label
        if expired:
            return distsvc.errors.HostUnreachable(
                label, f"no answer within {timeout:g} s (the host stopped answering)")
        if not self.alive():
            return distsvc.errors.HostUnreachable(label, "connection lost")
        return distsvc.errors.SessionRefused(label, f"refused {what}")

    def run(self, command: str, stdin: bytes = b"", timeout: float = 10.0
            ) -> tuple[int, bytes]:
        """Run to completion: (exit status or -1, stdout). Raises TimeoutError past `timeout`."""
        return run_to_end(self.open(command, timeout=timeout), stdin, timeout)

    def alive(self) -> bool:
        return self.transport.is_active()

    def close(self) -> None:
        self.client.close()  # a ProxyCommand is reaped by its own close (handshake)
        if self.jump is not None:
            self.jump.close()


class _NoReply(paramiko.SSHException):
    """The server did not answer a channel request before its deadline."""


def _replies_until(channel: paramiko.Channel, deadline: float) -> None:
    """Make the channel's waits for the server's replies to its requests (a pseudo-terminal,
    the command's start) end at `deadline` (time.monotonic()) with _NoReply.

    paramiko waits for them without a bound (`Channel._wait_for_event`), so a host that stops
    answering held the caller for ever. A Timer thread per command used to close the channel
    at the deadline: a thread started and joined for every command, about 3 ms of the
    daemon's CPU each. The caller removes the instance's override once its requests are
    answered (`vars(channel).pop("_wait_for_event")`)."""
    wait_for_event = channel._wait_for_event  # type: ignore[attr-defined]

    def wait() -> None:
        if not channel.event.wait(max(0.0, deadline - time.monotonic())):
            raise _NoReply("no reply in time")
        wait_for_event()  # the reply is in: paramiko's own reading of it

    channel._wait_for_event = wait  # type: ignore[attr-defined]


def run_to_end(process: RemoteProcess, stdin: bytes, timeout: float) -> tuple[int, bytes]:
    """Feed `stdin`, collect stdout until the command ends: (exit status or -1, stdout).

    Raises TimeoutError past `timeout`. Closes the process in every case.
    """
    deadline = time.monotonic() + timeout
    try:
        if stdin:
            process.channel.sendall(stdin)
        process.close_stdin()
        out = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer within {timeout:g} s")
            distsvc.polling.wait([process.fileno()], timeout=remaining)
            out += process.read_stdout()
            process.read_stderr()
            if process.finished():
                return process.exit_status(), bytes(out)
            if process.channel.eof_received:
                # From the end of output on, fileno() stays readable: wait for the exit status
                # or the close (sshd sends them once it reaped the command), rather than spin
                # on select, which cost a scan of 200 hosts a fifth of its CPU.
                process.channel.status_event.wait(remaining)
    finally:
        process.close()


def _drain(ready: Callable[[], bool], receive: Callable[[int], bytes], limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit and ready():
        chunks.append(receive(limit - size))
        size += len(chunks[-1])
    return b"".join(chunks)


class RemoteProcess:
    """A command running on a channel; the relay in distsvc.actions drives it.

    close() must be called when done with it: it closes the channel (and the pipe behind
    fileno(), which paramiko only closes then) and gives the session slot back.
    """

    def __init__(self, channel: paramiko.Channel, connection: Connection) -> None:
        self.channel = channel
        self.connection = connection
        self._fileno = channel.fileno()
        self._closed = False
        self._close_lock = threading.Lock()

    def fileno(self) -> int:
        """Readable when output, end of output or the exit status arrives."""
        return self._fileno

    def read_stdout(self, limit: int = 1 << 20) -> bytes:
        """What has arrived on stdout, at most about `limit` bytes."""
        return _drain(self.channel.recv_ready, self.channel.recv, limit)

    def read_stderr(self, limit: int = 1 << 20) -> bytes:
        return _drain(self.channel.recv_stderr_ready, self.channel.recv_stderr, limit)

    def stdout_to(self, fd: int) -> Sink:
        """Let the connection's transport thread write stdout to `fd`, a non-blocking
        descriptor, while the caller has no output of its own waiting (direct.py); read_stdout
        then returns what it could not take. Close the sink before closing `fd`."""
        return self.connection.sink(self.channel, fd)

    def write(self, data: bytes) -> None:
        self.channel.sendall(data)

    def close_stdin(self) -> None:
        self.channel.shutdown_write()

    def resize(self, columns: int, rows: int) -> None:
        self.channel.resize_pty(width=columns, height=rows)

    def finished(self) -> bool:
        """All output read and the command ended (or the channel closed)."""
        # The end is checked before the buffers: output that arrives in between is then seen
        # as not drained, never lost.
        ended = self.channel.closed or (
            bool(self.channel.eof_received) and self.channel.exit_status_ready())
        return ended and not self.channel.recv_ready() and not self.channel.recv_stderr_ready()

    def exit_status(self) -> int:
        """The command's exit status; -1 if the channel closed without one."""
        if self.channel.exit_status_ready():
            return self.channel.recv_exit_status()
        return -1

    def connection_lost(self) -> bool:
        transport = self.channel.get_transport()
        return transport is None or not transport.is_active()

    def close(self) -> None:
        """Close the channel and give its session slot back (once, from any thread)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self.connection.close_channel(self.channel)
        self.connection.release(self.channel)

    def abandon(self) -> None:
        """For a command that signals cannot reach: close its channel and, when nothing else
        runs on its connection, the connection too; the remote wrapper's watcher then ends
        the command's tree, as when a connection drops."""
        self.close()
        if self.connection.sessions == 0:
            self.connection.close()
