"""Reading a job's output files for `distsvc job logs`: the last lines, all of it, or live.

The files are written by systemd (not by the daemon), so a reader only ever reads: with
os.pread at offsets of its own, never moving an fd's shared offset (the daemon passes the
same open files to many clients). A reader that stops reading holds up only itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

CHUNK = 1 << 20            # big reads: following 1 GiB of output must not be a syscall storm
FIRST_WAIT = 0.02          # after new output the next look comes soon...
LAST_WAIT = 0.25           # ...and backs off to this while nothing is written
_TAIL_BLOCK = 64 << 10


def tail_offset(fd: int, lines: int) -> int:
    """Where the last `lines` lines of the open file begin (a last line without a newline
    counts as one). Read backwards in blocks, so a huge file costs only its end."""
    size = os.fstat(fd).st_size
    if lines <= 0:
        return size
    position = size
    wanted = lines                     # newlines to pass: the last is before our first line
    if size and os.pread(fd, 1, size - 1) == b"\n":
        position -= 1                  # the file's final newline ends the last line
    while position > 0:
        start = max(0, position - _TAIL_BLOCK)
        block = os.pread(fd, position - start, start)
        end = len(block)
        while wanted:
            found = block.rfind(b"\n", 0, end)
            if found < 0:
                break
            wanted -= 1
            if not wanted:
                return start + found + 1
            end = found
        position = start
    return 0


def tail(path: str | os.PathLike[str], lines: int) -> bytes:
    """The last `lines` lines of the file, as bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        start = tail_offset(fd, lines)
        size = os.fstat(fd).st_size
        return _read_range(fd, start, size)
    finally:
        os.close(fd)


def _read_range(fd: int, start: int, end: int) -> bytes:
    parts = []
    while start < end:
        chunk = os.pread(fd, min(CHUNK, end - start), start)
        if not chunk:
            break
        parts.append(chunk)
        start += len(chunk)
    return b"".join(parts)


def _drain(fd: int, offset: int, name: str, write: Callable[[str, bytes], None]) -> int:
    """Read the stream from `offset` to its end now; the new offset."""
    while chunk := os.pread(fd, CHUNK, offset):
        write(name, chunk)
        offset += len(chunk)
    return offset


def follow(streams: Mapping[str, int], ended: Callable[[float], bool],
           write: Callable[[str, bytes], None],
           start: Mapping[str, int] | None = None) -> None:
    """Pass each stream's bytes to `write(name, data)` as they are written, until the job has
    ended and every byte was passed on.

    `streams` maps "stdout"/"stderr" to open fds, each read from its own offset (`start`,
    else the first byte) with os.pread. Across the two files, output goes out in the order it
    is seen: each look takes at most one chunk from each stream in turn, so two busy streams
    stay interleaved about as they were written. When both are at their end, `ended(wait)`
    is asked (it waits up to `wait` seconds for the job's end, and says whether it ended);
    the wait grows from 20 ms to 250 ms while nothing comes. After the end each stream is read
    once more to its true end, so the last bytes, written just before the end was seen, are
    never lost.
    """
    offsets = {name: (start or {}).get(name, 0) for name in streams}
    wait = FIRST_WAIT
    while True:
        moved = False
        for name, fd in streams.items():
            chunk = os.pread(fd, CHUNK, offsets[name])
            if chunk:
                write(name, chunk)
                offsets[name] += len(chunk)
                moved = True
        if moved:
            wait = FIRST_WAIT
            continue
        if ended(wait):
            break
        wait = min(wait * 2, LAST_WAIT)
    for name, fd in streams.items():
        offsets[name] = _drain(fd, offsets[name], name, write)


def dump(streams: Mapping[str, int], write: Callable[[str, bytes], None],
         start: Mapping[str, int] | None = None) -> None:
    """A finished job's output without --follow: all of stdout, then all of stderr.

    Two separate files do not record how their writes interleaved, so a finished job's
    streams cannot be given in their true order; one after the other is the honest answer
    (`follow` while the job runs gets closer, by reading as they grow).
    """
    for name in ("stdout", "stderr"):
        if name in streams:
            _drain(streams[name], (start or {}).get(name, 0), name, write)
