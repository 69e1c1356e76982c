"""The daemon: accepts connections, checks each peer, dispatches one request per connection.

`serve()` is a plain function over a listening socket, so tests run a daemon in-process.
Request handlers live in distsvc.daemon.handlers, one per request type, in a table.

Its life: `serve()` accepts until asked to stop (SIGTERM), until idle, or until it retires
(a client of another installation connected: it exits as soon as no request is in progress,
and the next command starts the new version). While a `run` is in progress its client hears
a heartbeat every HEARTBEAT_INTERVAL, sent from the accept loop, so a client notices a daemon
that died or hangs. A stop ends every running command's remote tree (SIGTERM through the
run's own event queue, as if its user had sent it), waits up to STOP_GRACE for the handlers,
and tells each client why its command ended.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import socket
import threading
import time
from typing import Any

import distsvc
import distsvc.actions.relay
import distsvc.adapters.ssh
import distsvc.adapters.systemd
import distsvc.adapters.unix
import distsvc.config
import distsvc.daemon.context
import distsvc.errors
import distsvc.log
import distsvc.paths
import distsvc.protocol

REQUEST_TIMEOUT = 10.0  # a client has this long to send its request
MAX_CONNECTIONS = 256  # beyond this, new connections are closed at once
CONNECTION_IDLE = 600.0  # SSH connections unused this long are closed
HEARTBEAT_INTERVAL = 2.0  # a running command's client hears from us at least this often
STOP_GRACE = 5.0  # on a stop, how long running commands get to end their remote trees
HEARTBEAT = {"type": "heartbeat"}
IDLE_WORKER_WAIT = 5.0  # a connection thread waits this long for the next connection, then ends
MAX_IDLE_WORKERS = 32
ACCEPT_BATCH = 64  # connections accepted per turn of the loop, at most: its checks stay timely
# What the accepting thread peeks at first; a longer request (a `best` carries the client's
# configuration: ~62 bytes per host, 64 KiB from ~1,050 hosts) is peeked at again whole.
INLINE_PEEK = 65536


def _refuse(sock: socket.socket, text: str) -> None:
    """Send a one-line error and close gracefully: unread input is drained first, or the
    kernel would answer it with a reset that destroys the error before the peer reads it."""
    with contextlib.suppress(OSError):
        distsvc.adapters.unix.send(sock, distsvc.protocol.error(text, 2))
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.5)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and sock.recv(65536):
            pass


def handle_connection(daemon: distsvc.daemon.context.Daemon, sock: socket.socket) -> None:
    import distsvc.daemon.handlers

    log = distsvc.log  # a bound logger costs ~40 us: got where a line is written (`log.get()`)
    reader = distsvc.adapters.unix.Reader(sock)
    user_request = True
    peer: distsvc.daemon.context.Peer | None = None
    try:
        pid, uid = distsvc.adapters.unix.peer_credentials(sock)
        if uid != os.getuid():
            log.get().warning("refused a connection from another user", peer_uid=uid, peer_pid=pid)
            _refuse(sock, f"permission denied: this daemon serves uid {os.getuid()} only")
            return
        sock.settimeout(REQUEST_TIMEOUT)
        try:
            request = reader.receive()
            if request is None:
                return
            kind = distsvc.protocol.request_type(request)
        except distsvc.protocol.ProtocolError as error:
            log.get().warning("bad request", peer_pid=pid, error=str(error))
            _refuse(sock, f"bad request: {error}")
            return
        sock.settimeout(None)
        # The scan timer's passes are not the user's activity: they must not keep an idle
        # daemon alive.
        user_request = kind != "scan"
        check_identity(daemon, request, pid)
        check_own_files(daemon)
        daemon.reload_config_if_changed()
        peer = distsvc.daemon.context.Peer(
            sock, reader, pid, uid, heartbeats=request.get("heartbeats") is True,
            what=distsvc.daemon.context.describe(request))
        if kind == "run":
            register_run(daemon, peer)
        try:
            response = distsvc.daemon.handlers.HANDLERS[kind](daemon, request, peer)
        except distsvc.errors.DistsvcError as error:
            response = distsvc.protocol.error(error.message, error.exit_status)
        except distsvc.protocol.ProtocolError as error:
            response = distsvc.protocol.error(f"bad request: {error}", 2)
        except Exception as error:  # one request failing must not take the daemon down
            log.get().exception("request failed", request=kind, peer_pid=pid)
            response = distsvc.protocol.error(f"internal error: {error!r}", 255)
        if peer.stopped:
            response = distsvc.protocol.error(distsvc.daemon.context.stopped_message(peer), 255)
        if response is not None:
            with contextlib.suppress(OSError):
                peer.send(response)
    except OSError as error:
        log.get().info("connection ended", error=str(error))
    finally:
        reader.close_fds()
        with daemon.lock:
            if peer is not None:
                daemon.runs.discard(peer)
            daemon.connections -= 1
            if user_request:
                daemon.last_activity = time.monotonic()
            last = daemon.connections == 0
        if last:
            daemon.wake()
        if peer is not None:
            peer.close()
        else:
            sock.close()


def register_run(daemon: distsvc.daemon.context.Daemon, peer: distsvc.daemon.context.Peer) -> None:
    """A `run` in progress: its client gets heartbeats (the first at once, so it knows we
    send them), and a stop ends its command, even one that comes before it started."""
    with daemon.lock:
        daemon.runs.add(peer)
        if daemon.stopping:
            peer.stop_command()
    if peer.heartbeats:
        peer.send_if_writable(HEARTBEAT)


def check_identity(daemon: distsvc.daemon.context.Daemon, request: dict[str, Any],
                   peer_pid: int) -> None:
    """A client of another installation (an upgrade, a git pull) makes the daemon retire: it
    serves this request and the running ones, then exits, and the next command gets a daemon
    of the client's version (socket activation, or the client starts one)."""
    client = request.get("client")
    if not isinstance(client, str) or client == daemon.identity:
        return
    _retire(daemon, "a client of another version", ours=daemon.identity, client=client,
            peer_pid=peer_pid)


def _retire(daemon: distsvc.daemon.context.Daemon, why: str, **fields: Any) -> None:
    """Retire once the requests in progress are done, saying why the first time only."""
    with daemon.lock:
        if daemon.retiring:
            return
        daemon.retiring = True
    distsvc.log.get().info(f"{why}: retiring once the requests in progress are done",
                           **fields)


SOURCE_CHECK_INTERVAL = 1.0  # seconds between two looks at the daemon's own files


def check_own_files(daemon: distsvc.daemon.context.Daemon) -> None:
    """Files of this installation changed since the daemon started (an upgrade that kept the
    version, a `git pull` in an editable install): it retires as for a client of another
    version. Looked at by workers at most once a second (~1 ms), never by the accepting
    thread, which must not wait for a file system."""
    now = time.monotonic()
    with daemon.lock:
        if daemon.retiring or now - daemon.source_checked < SOURCE_CHECK_INTERVAL:
            return
        daemon.source_checked = now
    stamp = distsvc.source_stamp()
    if stamp != daemon.source_stamp:
        _retire(daemon, "its own files changed", started_with=daemon.source_stamp, now=stamp)


def status_line(daemon: distsvc.daemon.context.Daemon) -> str:
    with daemon.lock:
        jobs = len(daemon.jobs)
    return (f"serving; {len(daemon.config.hosts)} hosts configured, "
            f"{daemon.pool.size()} connections, {jobs} jobs")


class Workers:
    """The connection threads, reused: starting a thread costs ~100 us of CPU, handing a
    connection to a waiting one ~15 (a burst of `best` queries is mostly that). A connection
    never waits for a busy thread: with none waiting a new one starts, so a slow request
    holds back only itself, as with a thread per connection. A thread that served its
    connection waits IDLE_WORKER_WAIT for another (at most MAX_IDLE_WORKERS wait), then ends.

    `idle` counts the waiting threads not yet handed a connection: a hand-over and its
    count are one step under `lock`, so a thread that gives up waiting takes what was
    handed to it meanwhile.
    """

    def __init__(self, daemon: distsvc.daemon.context.Daemon) -> None:
        self.daemon = daemon
        self.lock = threading.Lock()
        self.handed: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
        self.idle = 0
        self.closed = False

    def serve(self, sock: socket.socket) -> None:
        """Serve an accepted connection on a waiting thread, else on a new one."""
        with self.lock:
            if self.idle and not self.closed:
                self.idle -= 1
                self.handed.put(sock)
                return
        threading.Thread(target=self._work, args=(sock,), daemon=True,
                         name="connection").start()

    def close(self) -> None:
        """The waiting threads end; busy ones end after their connection."""
        with self.lock:
            self.closed = True
            waiting, self.idle = self.idle, 0
            for _ in range(waiting):
                self.handed.put(None)

    def _work(self, sock: socket.socket | None) -> None:
        while sock is not None:
            handle_connection(self.daemon, sock)
            sock = self._next()

    def _next(self) -> socket.socket | None:
        with self.lock:
            if self.closed or self.idle >= MAX_IDLE_WORKERS:
                return None
            self.idle += 1
        try:
            return self.handed.get(timeout=IDLE_WORKER_WAIT)
        except queue.Empty:
            with self.lock:
                try:
                    return self.handed.get_nowait()  # handed over as we gave up
                except queue.Empty:
                    self.idle -= 1
                    return None


class Stop:
    """Asks serve() to return; safe to call from a signal handler. Wakes it at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def set(self) -> None:
        self.event.set()
        self.poke()

    def poke(self) -> None:
        """Wake serve() for a look at whether it may exit (the last connection ended)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.wake_w, b"\0")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.wake_r, 4096):
                pass

    def is_set(self) -> bool:
        return self.event.is_set()


def _load_jobs(daemon: distsvc.daemon.context.Daemon) -> None:
    try:
        daemon.book.configure(daemon.config)
        daemon.book.load()
    except Exception:  # a bus that does not answer must not take the daemon down
        distsvc.log.get().exception("could not bring the jobs up to date")


def serve(listener: socket.socket, daemon: distsvc.daemon.context.Daemon, stop: Stop) -> None:
    """Serve until `stop` is set, the daemon retires, or nothing happened for
    config.daemon_idle_exit seconds. A stop ends the running commands first."""
    log = distsvc.log.get()
    listener.setblocking(False)
    watchdog = distsvc.adapters.systemd.watchdog_interval()
    last_ping = last_beat = 0.0
    distsvc.adapters.systemd.notify(READY=1, STATUS=status_line(daemon))
    daemon.hoststate.open()  # before the first request: from now on it is read from memory
    workers = Workers(daemon)
    daemon.wake = stop.poke
    log.info("daemon ready", version=distsvc.__version__, pid=os.getpid(),
             hosts=len(daemon.config.hosts))
    if daemon.book.root.is_dir():
        # Jobs that ended while no daemon ran get their records (and their units go) now,
        # not only when someone asks; it stays busy (so alive) while jobs run.
        threading.Thread(target=_load_jobs, args=(daemon,), daemon=True, name="jobs").start()
    while not stop.is_set():
        now = time.monotonic()
        if watchdog is not None and now - last_ping >= watchdog:
            # Pinged from the accept loop: a hung loop stops the pings and systemd restarts us.
            distsvc.adapters.systemd.notify(WATCHDOG=1, STATUS=status_line(daemon))
            last_ping = now
        if now - last_beat >= HEARTBEAT_INTERVAL:
            beat(daemon)  # from this loop too: a hung daemon falls silent
            last_beat = now
        with daemon.lock:
            idle_for = now - daemon.last_activity
        # Checked on every turn: requests that are not the user's (scan passes) keep the loop
        # turning without counting as activity.
        idle = idle_for > daemon.config.daemon_idle_exit and not daemon.watching_jobs()
        if not daemon.busy():
            if daemon.retiring:
                log.info("retiring: a newer daemon takes over")
                break
            if idle:
                log.info("exiting after being idle", idle_seconds=round(idle_for))
                break
        # Wakes for a connection, a stop, the end of the last connection (a daemon due to
        # exit goes then), or each second for the watchdog and idle checks.
        readable, _, _ = select.select([listener.fileno(), stop.wake_r], [], [], 1.0)
        if stop.wake_r in readable and not stop.is_set():
            stop.drain()
        if listener.fileno() not in readable or stop.is_set():
            daemon.pool.close_idle(CONNECTION_IDLE)
            continue
        accept_waiting(listener, daemon, workers)
    workers.close()
    if stop.is_set():
        end_running_commands(daemon)
    daemon.hoststate.close()  # what is not written yet, the ended commands' releases too
    distsvc.adapters.systemd.notify(STOPPING=1)
    daemon.pool.close_all()
    log.info("daemon stopped")


def accept_waiting(listener: socket.socket, daemon: distsvc.daemon.context.Daemon,
                   workers: Workers) -> None:
    """Accept the connections waiting (at most ACCEPT_BATCH) and hand each to a worker:
    under a burst of queries one turn of the loop (a select, the idle checks) serves many."""
    for _ in range(ACCEPT_BATCH):
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return  # none left (or another process took it)
        except OSError as error:
            distsvc.log.get().error("accept failed", error=str(error))
            time.sleep(0.1)
            return
        if answer_inline(daemon, sock):
            continue
        sock.setblocking(True)
        with daemon.lock:
            if daemon.connections >= MAX_CONNECTIONS:
                sock.close()
                continue
            daemon.connections += 1
        workers.serve(sock)


def answer_inline(daemon: distsvc.daemon.context.Daemon, sock: socket.socket) -> bool:
    """Answer a `best` or `status` on the accepting thread, and close it, when its whole
    request is already in and the answer needs no I/O (handlers.INLINE_HANDLERS); False,
    with nothing read, for every other connection: a worker serves it.

    Under a burst of queries most are answered so: one thread, no hand-over, and no worker
    threads contending for the interpreter lock (with 32 at once, each send and lock waited
    milliseconds for it). The loop cannot block here: the request is only peeked at
    (MSG_DONTWAIT), the answer is a few bytes into an empty socket buffer (sent without
    waiting), and the state in memory is held by no I/O but a stat: a changed configuration
    or state file, or a handler that fails, sends the request to a worker."""
    import distsvc.daemon.handlers

    try:
        pid, uid = distsvc.adapters.unix.peer_credentials(sock)
        waiting = sock.recv(INLINE_PEEK, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        whole = distsvc.protocol.frame_size(waiting)
        if whole is not None and len(waiting) < whole <= distsvc.protocol.HEADER.size + (
                distsvc.protocol.MAX_FRAME):
            # With 1,000 hosts configured every `best` went to a worker, whose full ranking
            # made a query cost 4x the tally's (docs/benchmarks.md, "How costs grow").
            waiting = sock.recv(whole, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:
        return False  # nothing sent yet (BlockingIOError), or gone: the worker finds out
    if uid != os.getuid():
        return False  # refused by the worker, with a line
    request = _decoded(waiting)
    if request is None:
        return False
    kind = request.get("type")
    handler = (distsvc.daemon.handlers.INLINE_HANDLERS.get(kind) if isinstance(kind, str)
               else None)
    if handler is None:
        return False
    # Reading a changed configuration or state file is a worker's job: this thread sends
    # the heartbeats and the watchdog pings, and must not wait for a file system (the
    # handlers decline when the state file changed: MemoryStore.snapshot_if_current).
    if daemon.config_changed():
        return False
    check_identity(daemon, request, pid)
    try:
        answer = handler(daemon, request)
    except Exception:  # nothing is read yet: a worker serves it, and answers an error
        distsvc.log.get().exception("inline answer failed; a worker takes the request",
                                    request=kind, peer_pid=pid)
        return False
    if answer is None:
        return False
    try:
        sock.setblocking(False)
        sock.recv(len(waiting))  # the request, as peeked
        distsvc.adapters.unix.send(sock, answer)  # raises rather than waits
    except OSError as error:
        distsvc.log.get().info("connection ended", error=str(error))
    finally:
        sock.close()
        daemon.touch()
    return True


# Requests the accepting thread decoded, by their bytes: a script or a client asking again
# sends the same frame, and decoding it again (the configuration it carries too, and the
# signature handlers.wire_config keys it by) was a tenth of a query's CPU. Handlers never
# change a request.
_requests: dict[bytes, dict[str, Any]] = {}
KNOWN_REQUESTS = 32  # distinct frames kept; more clears them


def _decoded(frame: bytes) -> dict[str, Any] | None:
    """The one request `frame` holds, decoded once per distinct frame; None when it is not
    exactly one whole request."""
    if (request := _requests.get(frame)) is not None:
        return request
    decoder = distsvc.protocol.Decoder()
    try:
        messages = decoder.feed(frame)
    except distsvc.protocol.ProtocolError:
        return None
    if len(messages) != 1 or decoder.buffer:
        return None
    request = messages[0]
    # Only what may be answered here is kept: a `run` request carries a client's whole
    # environment (secrets too), which must not outlive the command, and is never repeated.
    kind = request.get("type")
    if isinstance(kind, str) and kind in distsvc.daemon.handlers.INLINE_HANDLERS:
        if len(_requests) >= KNOWN_REQUESTS:
            _requests.clear()
        _requests[frame] = request
    return request


def beat(daemon: distsvc.daemon.context.Daemon) -> None:
    """A heartbeat to the client of every `run` in progress that asked for them."""
    with daemon.lock:
        peers = [peer for peer in daemon.runs if peer.heartbeats]
    for peer in peers:
        peer.send_if_writable(HEARTBEAT)


def end_running_commands(daemon: distsvc.daemon.context.Daemon, grace: float = STOP_GRACE) -> None:
    """A stop: end every running command's remote tree, give the handlers `grace` seconds
    to see it end and tell their clients, then tell the clients of the rest ourselves (their
    commands end on the hosts when our connections close, which follows)."""
    with daemon.lock:
        daemon.stopping = True
        runs = list(daemon.runs)
    if not runs:
        return
    log = distsvc.log.get()
    log.info("stopping: ending the running commands", commands=len(runs))
    distsvc.adapters.systemd.notify(STOPPING=1, STATUS=f"stopping: ending {len(runs)} commands")
    for peer in runs:
        peer.stop_command()
    deadline = time.monotonic() + grace
    last_beat = time.monotonic()
    while time.monotonic() < deadline:
        with daemon.lock:
            if not daemon.runs:
                return
        if time.monotonic() - last_beat >= HEARTBEAT_INTERVAL:
            beat(daemon)
            last_beat = time.monotonic()
        time.sleep(0.05)
    with daemon.lock:
        left = list(daemon.runs)
    log.warning("stopping: commands did not end in time; closing their connections",
                commands=len(left))
    for peer in left:
        # The handler never sends its answer after this: we are about to exit.
        peer.send_if_writable(distsvc.protocol.error(
            distsvc.daemon.context.stopped_message(peer, ended=False), 255))
