"""distsvc.jobs.output: tail, dump and follow of a job's output files, read with pread only."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from distsvc.jobs import output

# --- tail -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "lines", "expected"), [
    (b"a\nb\nc\n", 2, b"b\nc\n"),
    (b"a\nb\nc\n", 1, b"c\n"),
    (b"a\nb\nc\n", 3, b"a\nb\nc\n"),
    (b"a\nb\nc\n", 10, b"a\nb\nc\n"),
    (b"a\nb\nc", 1, b"c"),
    (b"a\nb\nc", 2, b"b\nc"),
    (b"a\n\n\n", 2, b"\n\n"),
    (b"", 5, b""),
    (b"a\nb\n", 0, b""),
    (b"\n", 1, b"\n"),
    (b"no newline at all", 1, b"no newline at all"),
])
def test_tail_gives_the_last_lines(tmp_path, content, lines, expected):
    path = tmp_path / "out"
    path.write_bytes(content)
    assert output.tail(path, lines) == expected


def test_tail_of_a_large_file_across_blocks(tmp_path):
    path = tmp_path / "out"
    rows = [f"line {n:06d} ".encode() * (n % 50) + b"\n" for n in range(20_000)]
    path.write_bytes(b"".join(rows))
    assert output.tail(path, 1234) == b"".join(rows[-1234:])
    assert output.tail(path, 1) == rows[-1]


def test_tail_offset_leaves_the_fds_offset_alone(tmp_path):
    path = tmp_path / "out"
    path.write_bytes(b"a\nb\nc\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 1, os.SEEK_SET)
        assert output.tail_offset(fd, 1) == 4
        assert os.lseek(fd, 0, os.SEEK_CUR) == 1
    finally:
        os.close(fd)


# --- follow and dump ------------------------------------------------------------------------


class Job:
    """Two output files appended by a writer thread, as systemd appends a job's output."""

    def __init__(self, directory: Path) -> None:
        self.paths = {name: directory / name for name in ("stdout", "stderr")}
        self.writers = {name: os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                        for name, p in self.paths.items()}
        self.readers = {name: os.open(p, os.O_RDONLY) for name, p in self.paths.items()}
        self.over = threading.Event()
        self.written = {name: hashlib.sha256() for name in self.paths}

    def write(self, name: str, data: bytes) -> None:
        os.write(self.writers[name], data)
        self.written[name].update(data)

    def ended(self, wait: float) -> bool:
        return self.over.wait(wait)

    def close(self) -> None:
        for fd in (*self.writers.values(), *self.readers.values()):
            os.close(fd)


@pytest.fixture
def job(tmp_path: Path) -> Iterator[Job]:
    made = Job(tmp_path)
    yield made
    made.close()


class Reader:
    def __init__(self) -> None:
        self.got = {"stdout": hashlib.sha256(), "stderr": hashlib.sha256()}
        self.sizes = {"stdout": 0, "stderr": 0}
        self.order: list[str] = []

    def write(self, name: str, data: bytes) -> None:
        self.got[name].update(data)
        self.sizes[name] += len(data)
        self.order.append(name)


def test_follow_passes_every_byte_of_both_streams_and_stops_at_the_end(job):
    reader = Reader()
    follower = threading.Thread(target=output.follow, args=(job.readers, job.ended,
                                                            reader.write))
    follower.start()
    for round in range(200):
        job.write("stdout", os.urandom(1000 + round * 37))
        if round % 3 == 0:
            job.write("stderr", os.urandom(500 + round))
    job.over.set()
    follower.join(timeout=60)
    assert not follower.is_alive()
    for name in ("stdout", "stderr"):
        assert reader.got[name].hexdigest() == job.written[name].hexdigest()


def test_the_last_bytes_written_as_the_job_ends_are_not_lost(job):
    """Output that arrives between the last look and the end being seen is still read."""
    job.write("stdout", b"early\n")
    calls = []

    def ended(wait: float) -> bool:
        calls.append(wait)
        job.write("stdout", b"last words\n")
        job.write("stderr", b"last error\n")
        return True

    got: list[tuple[str, bytes]] = []
    output.follow(job.readers, ended, lambda name, data: got.append((name, data)))
    assert b"".join(d for n, d in got if n == "stdout") == b"early\nlast words\n"
    assert b"".join(d for n, d in got if n == "stderr") == b"last error\n"
    assert calls == [output.FIRST_WAIT]


def test_follow_backs_off_while_nothing_is_written(job):
    waits: list[float] = []

    def ended(wait: float) -> bool:
        waits.append(wait)
        return len(waits) == 7

    output.follow(job.readers, ended, lambda name, data: None)
    assert waits == [0.02, 0.04, 0.08, 0.16, 0.25, 0.25, 0.25]


def test_new_output_resets_the_backoff(job):
    waits: list[float] = []

    def ended(wait: float) -> bool:
        waits.append(wait)
        if len(waits) == 3:
            job.write("stderr", b"x")
        return len(waits) == 5

    output.follow(job.readers, ended, lambda name, data: None)
    assert waits == [0.02, 0.04, 0.08, 0.02, 0.04]


def test_follow_interleaves_two_busy_streams_chunk_by_chunk(job):
    job.write("stdout", b"o" * (3 * output.CHUNK))
    job.write("stderr", b"e" * (3 * output.CHUNK))
    job.over.set()
    reader = Reader()
    output.follow(job.readers, job.ended, reader.write)
    assert reader.order[:6] == ["stdout", "stderr"] * 3
    assert reader.sizes == {"stdout": 3 * output.CHUNK, "stderr": 3 * output.CHUNK}


def test_follow_never_moves_the_shared_offset_and_honours_start(job):
    job.write("stdout", b"0123456789")
    job.write("stderr", b"abcdef")
    for fd in job.readers.values():
        os.lseek(fd, 2, os.SEEK_SET)
    job.over.set()
    got: list[tuple[str, bytes]] = []
    output.follow(job.readers, job.ended, lambda n, d: got.append((n, d)),
                  start={"stdout": 7})
    assert b"".join(d for n, d in got if n == "stdout") == b"789"
    assert b"".join(d for n, d in got if n == "stderr") == b"abcdef"
    assert [os.lseek(fd, 0, os.SEEK_CUR) for fd in job.readers.values()] == [2, 2]


def followers(job: Job, count: int) -> tuple[list[Reader], list[threading.Thread]]:
    """Readers, each with the thread that follows the job into it (not started yet)."""
    readers = [Reader() for _ in range(count)]
    return readers, [threading.Thread(target=output.follow,
                                      args=(job.readers, job.ended, r.write)) for r in readers]


def assert_each_got_everything(job: Job, readers: list[Reader],
                               threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    for reader in readers:
        for name in ("stdout", "stderr"):
            assert reader.got[name].hexdigest() == job.written[name].hexdigest()


def test_many_followers_of_the_same_fds_each_get_everything(job):
    readers, threads = followers(job, 20)
    for thread in threads[:10]:
        thread.start()                      # before the output
    for round in range(100):
        job.write("stdout", os.urandom(20_000))
        job.write("stderr", os.urandom(3_000))
        if round == 50:
            for thread in threads[10:15]:   # during
                thread.start()
    job.over.set()
    for thread in threads[15:]:             # after the end
        thread.start()
    assert_each_got_everything(job, readers, threads)


def test_megabytes_of_binary_output_in_odd_writes_arrive_whole(job):
    """Writes of every size, across chunk boundaries, to followers started at any moment."""
    readers, threads = followers(job, 4)
    threads[0].start()
    sizes = [1, 4095, 4097, (1 << 20) - 1, (1 << 20) + 1, 3 << 20, 17, 65536]
    for round in range(3):
        for size in sizes:
            job.write("stdout" if size % 2 else "stderr", os.urandom(size))
        threads[round + 1].start()
    job.over.set()
    assert_each_got_everything(job, readers, threads)
    assert all(sum(r.sizes.values()) == 3 * sum(sizes) for r in readers)


def test_a_stopped_follower_holds_up_only_itself(job):
    stuck = threading.Event()
    release = threading.Event()

    def stopped_write(name: str, data: bytes) -> None:
        stuck.set()
        release.wait(60)

    slow = threading.Thread(target=output.follow, args=(job.readers, job.ended, stopped_write))
    slow.start()
    job.write("stdout", b"x" * 100_000)
    assert stuck.wait(30)
    job.write("stdout", b"y" * 100_000)
    job.over.set()
    fast = Reader()
    output.follow(job.readers, job.ended, fast.write)
    assert fast.got["stdout"].hexdigest() == job.written["stdout"].hexdigest()
    release.set()
    slow.join(timeout=60)
    assert not slow.is_alive()


def test_dump_gives_stdout_then_stderr(job):
    job.write("stderr", b"err1\n")
    job.write("stdout", b"out1\n")
    job.write("stderr", b"err2\n")
    got: list[tuple[str, bytes]] = []
    output.dump(job.readers, lambda n, d: got.append((n, d)))
    assert got == [("stdout", b"out1\n"), ("stderr", b"err1\nerr2\n")]
    got.clear()
    output.dump({"stderr": job.readers["stderr"]}, lambda n, d: got.append((n, d)),
                start={"stderr": 5})
    assert got == [("stderr", b"err2\n")]


def test_dump_reads_big_files_in_big_chunks(job):
    job.write("stdout", b"z" * (2 * output.CHUNK + 5))
    sizes: list[int] = []
    output.dump(job.readers, lambda n, d: sizes.append(len(d)))
    assert sizes == [output.CHUNK, output.CHUNK, 5]
