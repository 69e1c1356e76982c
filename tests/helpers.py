"""Small helpers shared by the end-to-end tests: pseudo-terminals and polling."""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import conftest


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def reap(processes: list[subprocess.Popen[bytes]]) -> None:
    """Kill and wait for whichever of `processes` a failed test left running."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def sleeps_with(marker: str) -> list[int]:
    """PIDs of the `sleep MARKER` processes on this machine."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True,
                         check=True).stdout
    pids = []
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if args.strip() == f"sleep {marker}":
            pids.append(int(pid))
    return pids


def unix_exchange(path: Path | str, data: bytes, timeout: float = 10,
                  delay: float = 0.0) -> bytes:
    """Connect to the unix socket at `path`, wait `delay` seconds, send `data`, half-close,
    read all."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        time.sleep(delay)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def set_window(fd: int, columns: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


class Terminal:
    """A process started with a new pseudo-terminal as its controlling terminal."""

    def __init__(self, client: conftest.Client, name: str, *args: str,
                 size: tuple[int, int] = (100, 30), **kw: Any) -> None:
        self.master, self.slave = os.openpty()
        set_window(self.slave, *size)
        self.initial_attributes = termios.tcgetattr(self.slave)

        def become_session_leader() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.process: subprocess.Popen[bytes] = client.popen(
            name, *args, stdin=self.slave, stdout=self.slave, stderr=self.slave,
            preexec_fn=become_session_leader, **kw)
        self.output = b""

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def read_until(self, needle: bytes, timeout: float = 20) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{needle!r} not seen; output so far: {self.output!r}")
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:
                    break
        return self.output

    def wait(self, timeout: float = 30) -> int:
        status = self.process.wait(timeout)
        # Drain what is left so the output is complete.
        while select.select([self.master], [], [], 0.1)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.output += chunk
        return status

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)
        os.close(self.slave)


# --- jobs, as a user of this machine (anything with `run(PROGRAM, *ARGS, timeout=)`) -------


def client_job(client: Any, *args: str, check: bool = True, timeout: float = 60
               ) -> subprocess.CompletedProcess[bytes]:
    """`distsvc job ARGS` as `client` (conftest.Client, or a test's own user); with `check`,
    a failure raises with its status and stderr."""
    done: subprocess.CompletedProcess[bytes] = client.run("distsvc", "job", *args,
                                                          timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"distsvc job {' '.join(args)}: {done.returncode}: "
                             f"{done.stderr.decode()}")
    return done


# --- jobs, in a booted bed (container.Container or vmbed.VM: both have run_as_user) -------


def job(bed: Any, *args: str, check: bool = True, timeout: float = 60,
        env: dict[str, str] | None = None) -> Any:
    """`distsvc job ARGS` as the bed's user, through its daemon only (no fallback)."""
    return bed.run_as_user(["distsvc", "job", *args], check=check, timeout=timeout,
                           env={"DISTSVC_DAEMON": "required", **(env or {})})


def start_job(bed: Any, *args: str) -> str:
    """`distsvc job start ARGS`: the new job's ID."""
    job_id = str(job(bed, "start", *args).stdout.strip())
    assert job_id.isdigit(), job_id
    return job_id


def job_status(bed: Any, job_id: str) -> dict[str, Any]:
    import json

    return json.loads(job(bed, "status", "--json", job_id).stdout)["job"]  # type: ignore[no-any-return]


def pause_resume_and_wait(job: Callable[..., Any], job_id: str) -> dict[str, Any]:
    """`distsvc job` (through `job(*args)`) pauses a job writing a line every 50 ms, sees no
    output for a while, resumes it and waits for its success; the record as paused."""
    import json

    time.sleep(1)
    paused: dict[str, Any] = json.loads(job("pause", "--json", job_id).stdout)["job"]
    assert paused["paused"] is True
    time.sleep(1.2)
    before = job("logs", job_id).stdout
    time.sleep(1.2)
    assert job("logs", job_id).stdout == before, "output while paused"
    job("resume", job_id)
    assert job("wait", job_id, check=False).returncode == 0
    return paused
