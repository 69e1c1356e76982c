"""Waiting for file descriptors with poll(2), for the daemon's side of things.

select(2) cannot watch a descriptor numbered FD_SETSIZE (1024) or above, and a daemon with a
thousand warm connections holds such numbers: a `hosts --refresh` over 1,000 hosts failed
with "filedescriptor out of range in select()". poll has no such limit. The answer is what
select's would be: a descriptor at its end or in error counts as ready, so the caller's
read or write finds out which.
"""

from __future__ import annotations

import math
import select
from collections.abc import Iterable
from typing import Protocol


class HasFileno(Protocol):
    def fileno(self) -> int: ...


_READY_TO_READ = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR | select.POLLNVAL
_READY_TO_WRITE = select.POLLOUT | select.POLLHUP | select.POLLERR | select.POLLNVAL


def _number(fd: int | HasFileno) -> int:
    return fd if isinstance(fd, int) else fd.fileno()


def wait(read: Iterable[int | HasFileno] = (), write: Iterable[int | HasFileno] = (),
         timeout: float | None = None) -> tuple[list[int], list[int]]:
    """The descriptors of `read` ready to read and of `write` ready to write, once one is
    or `timeout` seconds passed (None: no limit); like select.select's first two lists."""
    reading = {_number(fd) for fd in read}
    writing = {_number(fd) for fd in write}
    poller = select.poll()
    for fd in reading | writing:
        poller.register(fd, (select.POLLIN | select.POLLPRI if fd in reading else 0)
                        | (select.POLLOUT if fd in writing else 0))
    events = poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
    return ([fd for fd, event in events if fd in reading and event & _READY_TO_READ],
            [fd for fd, event in events if fd in writing and event & _READY_TO_WRITE])
