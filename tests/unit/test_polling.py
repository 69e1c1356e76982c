"""distsvc.polling.wait: select's answers, for descriptors select cannot take."""

from __future__ import annotations

import os
import resource
import socket

import distsvc.polling


def test_a_descriptor_above_fd_setsize_is_waited_for() -> None:
    """A daemon with 1,000 warm connections holds descriptors above 1023, which made
    select() raise "filedescriptor out of range"."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    read_end, write_end = os.pipe()
    high_read, high_write = os.dup2(read_end, 1500), os.dup2(write_end, 1501)
    try:
        assert distsvc.polling.wait([high_read], [high_write], 0) == ([], [high_write])
        os.write(high_write, b"x")
        assert distsvc.polling.wait([high_read], timeout=5) == ([high_read], [])
    finally:
        for fd in (read_end, write_end, high_read, high_write):
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_end_counts_as_ready_as_with_select() -> None:
    ours, theirs = socket.socketpair()
    with ours:
        assert distsvc.polling.wait([ours], timeout=0) == ([], [])
        theirs.close()
        assert distsvc.polling.wait([ours], timeout=5) == ([ours.fileno()], [])
        assert ours.recv(10) == b""
