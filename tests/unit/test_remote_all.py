"""The line splitter of `run --all`: bytes in, whole lines prefixed by host out."""

from __future__ import annotations

import distsvc.actions.remote_all as remote_all


def test_whole_lines_are_prefixed_however_the_bytes_are_split() -> None:
    lines = remote_all._Lines(b"h1: ")
    assert lines.feed(b"a\nb") == b"h1: a\n"
    assert lines.feed(b"c") == b""
    assert lines.feed(b"\n\n\xff\x00\r\n") == b"h1: bc\nh1: \nh1: \xff\x00\r\n"
    assert lines.flush() == b""


def test_a_last_line_without_newline_gets_one() -> None:
    lines = remote_all._Lines(b"h1: ")
    assert lines.feed(b"x\nend") == b"h1: x\n"
    assert lines.flush() == b"h1: end\n"
    assert lines.flush() == b""


def test_an_overlong_line_goes_on_in_a_new_prefixed_line() -> None:
    lines = remote_all._Lines(b"h: ")
    out = lines.feed(b"x" * (remote_all.MAX_LINE + 5))
    assert out == b"h: " + b"x" * remote_all.MAX_LINE + b"\n"
    assert lines.flush() == b"h: xxxxx\n"
