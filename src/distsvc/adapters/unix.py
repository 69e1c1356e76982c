"""The unix socket between clients and the daemon: where it lives, who may use it, framing.

The socket lives in a directory only its user can reach: `$XDG_RUNTIME_DIR/distsvc/`, or
`/tmp/distsvc-USER-N/` when there is no usable runtime directory: unset, or it or its
distsvc directory not private (a wrong mode or owner). Client and daemon decide that with
the same function (`paths.runtime_dir`), so they always meet in the same place. Every directory
and socket is checked with lstat (symlinks are never followed): it must be owned by this
user and closed to group and others, or it is skipped and the next N is tried. Another user
can make us skip names, never make us use theirs. The daemon also checks each peer's uid
(SO_PEERCRED).
"""

from __future__ import annotations

import _socket  # socket's C half: socket.py costs the fast client ~5 ms (enum, selectors)
import _struct  # struct's C half: struct.py is one more module to find and load per call
import os
import select
import stat

import distsvc.paths
import distsvc.protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path
    from typing import Any

SOCKET_NAME = "distsvc.sock"
LOCK_FILE = "daemon.lock"  # held by the one daemon serving this directory
RECEIVE_CHUNK = 65536
MAX_FDS = 3
_INT = _struct.Struct("i")  # one fd in an SCM_RIGHTS message


def _own_socket(path: str) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISSOCK(info.st_mode) and info.st_uid == os.getuid()


def _tmp_candidates() -> Iterator[str]:
    import pwd  # only without a usable runtime directory: the fast client rarely needs it

    user = pwd.getpwuid(os.getuid()).pw_name
    base = os.environ.get("DISTSVC_TMP_BASE", "/tmp")  # tests point this elsewhere
    n = 0
    while True:
        yield os.path.join(base, f"distsvc-{user}-{n}")
        n += 1


def runtime_dir_problem(environ: Mapping[str, str]) -> str | None:
    """Why $XDG_RUNTIME_DIR is set but not used (for a warning), or None."""
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if not runtime or distsvc.paths.runtime_dir(environ) is not None:
        return None
    return (f"XDG_RUNTIME_DIR={runtime}: it or its distsvc directory is not a private "
            "directory of this user (mode 0700, owned by us)")


def find_socket(environ: Mapping[str, str]) -> str | None:
    """The daemon's socket if a safe one exists, else None. Never trusts what it checks."""
    runtime = distsvc.paths.runtime_dir(environ)
    if runtime is not None:
        path = os.path.join(runtime, SOCKET_NAME)
        return path if _own_socket(path) else None
    for directory in _tmp_candidates():
        try:
            os.lstat(directory)
        except FileNotFoundError:
            return None  # the first free name: no daemon made one yet
        except OSError:
            continue
        if distsvc.paths.private_dir(directory):
            path = os.path.join(directory, SOCKET_NAME)
            return path if _own_socket(path) else None
    return None  # pragma: no cover - the candidates never run out


def claim_directory(environ: Mapping[str, str]) -> Path:
    """The directory the daemon binds in, created 0700 when missing; always a safe one."""
    from pathlib import Path

    runtime = distsvc.paths.runtime_dir(environ)
    if runtime is not None:
        try:
            os.mkdir(runtime, 0o700)
        except FileExistsError:
            pass
        if distsvc.paths.private_dir(runtime):
            return Path(runtime)
        # Replaced since we looked: now clients look in /tmp too.
    for directory in _tmp_candidates():
        try:
            os.mkdir(directory, 0o700)  # atomic: fails if anything is there already
            return Path(directory)
        except FileExistsError:
            if distsvc.paths.private_dir(directory):
                return Path(directory)
    raise AssertionError("unreachable")


def take_daemon_lock(directory: Path) -> int | None:
    """The daemon lock of `directory` (an fd to keep open), or None if a daemon holds it."""
    import fcntl  # the daemon's and the scan's: not the fast client's

    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def daemon_running(socket_path: str | os.PathLike[str]) -> bool:
    """Whether a daemon serves `socket_path` now, without waking one by connecting (a
    socket-activated daemon would start, and count the check as use)."""
    import fcntl

    lock = os.path.join(os.path.dirname(os.fspath(socket_path)), LOCK_FILE)
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def connect(path: str | os.PathLike[str], timeout: float) -> _socket.socket:
    """A connected socket: the C type that socket.socket extends (no accept, no `with`)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(os.fspath(path))
    except BaseException:
        sock.close()
        raise
    return sock


def listen(directory: Path) -> socket.socket:
    """Bind the socket, replacing a stale one (nothing answering on it)."""
    import errno
    import socket

    path = os.path.join(directory, SOCKET_NAME)
    if _own_socket(path):
        try:
            connect(path, 0.5).close()
        except OSError:
            os.unlink(path)  # stale: its daemon is gone
        else:
            raise FileExistsError(errno.EADDRINUSE, "a daemon is already serving", path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)  # the socket is born 0600: no window where others connect
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    sock.listen(128)
    return sock


def writable(sock: _socket.socket) -> bool:
    """Whether a small message would be sent without blocking: a unix stream socket polls
    writable only while at most a quarter of its send buffer is in use."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    return any(events & select.POLLOUT for _fd, events in poller.poll(0))


def peer_credentials(sock: _socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end, as the kernel saw it connect."""
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _struct.calcsize("3i"))
    pid, uid, _gid = _struct.unpack("3i", creds)
    return int(pid), int(uid)


def send(sock: _socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """One frame; `fds` go with its first bytes (socket.send_fds, without socket.py).

    Raises OSError only while some of the frame is unsent, so the peer cannot have taken it:
    once it is all out, the peer may act on it, answer and close at once (a `run`'s command
    may have run), and sendall() of nothing left would still fail with EPIPE."""
    frame = distsvc.protocol.encode(message)
    if fds:
        rights = b"".join(_INT.pack(fd) for fd in fds)
        sent = sock.sendmsg([frame], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        frame = frame[sent:]
    if frame:
        sock.sendall(frame)


class Reader:
    """Reads messages (and file descriptors passed with them) from one socket."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.decoder = distsvc.protocol.Decoder()
        self.pending: list[dict[str, Any]] = []
        self.fds: list[int] = []

    def receive(self, flags: int = 0) -> dict[str, Any] | None:
        """The next message, or None at end of stream. Raises ProtocolError, OSError (with
        flags=MSG_DONTWAIT, BlockingIOError until a whole message is in: call again later)."""
        while not self.pending:
            data, ancillary, _flags, _addr = self.sock.recvmsg(
                RECEIVE_CHUNK, _socket.CMSG_LEN(MAX_FDS * _INT.size), flags)
            for level, kind, rights in ancillary:  # socket.recv_fds, without socket.py
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    whole = len(rights) - len(rights) % _INT.size
                    self.fds += [fd for (fd,) in _INT.iter_unpack(rights[:whole])]
            if not data:
                if self.decoder.buffer:
                    raise distsvc.protocol.ProtocolError("connection closed mid-frame")
                return None
            self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    def close_fds(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
