"""`distsvc job wait ID... [--any]` and `job logs --attempt N`: the exit-status rule over
records, and what the client asks of the daemon. The daemon's side is a scripted unix socket
pair, so the requests are those on the wire."""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import distsvc.actions.jobs
import distsvc.adapters.unix
import distsvc.commands.main
import distsvc.errors
import helpers
from distsvc.commands import job as cli
from distsvc.jobs import record
from distsvc.jobs.limits import Limits
from distsvc.jobs.record import Job


def make(id: str, state: str, **changes: Any) -> dict[str, Any]:
    job = Job(id=id, name=None, argv=["true"], cwd="/", env_names=[], limits=Limits(),
              not_enforced={}, isolation=[], placement={}, state=state, created=1.0)
    return record.to_json(dataclasses.replace(job, **changes))


OK = make("1", "exited", exit_code=0)
EXIT_3 = make("2", "exited", exit_code=3)
KILLED = make("3", "killed", signal=15)
RUNNING = make("4", "running")
QUEUED = make("5", "queued", reason="no free slot")
DEPENDENCY = make("6", "dependency-failed", reason="job 2 exited 3")
UNKNOWN = make("7", "unknown", reason="the unit vanished")
HOST_DOWN = make("8", "running", host_down_since=5.0,
                 placement={"kind": "ssh", "host": "h1", "mode": "systemd", "unit": "u",
                            "dir": "/d"})


@pytest.mark.parametrize(("ids", "jobs", "status"), [
    (["1"], [OK], 0),
    (["1", "2"], [OK, EXIT_3], 3),
    (["2", "3"], [EXIT_3, KILLED], 3),             # the first that did not succeed
    (["3", "2"], [EXIT_3, KILLED], 143),           # in the order given, not the answer's
    (["1", "6"], [OK, DEPENDENCY], 125),
    (["7", "1"], [OK, UNKNOWN], 255),
    (["1", "9"], [OK], 255),                       # a job the answer does not hold
    (["1", "1"], [OK], 0),
])
def test_all_is_zero_or_the_first_job_that_did_not_succeed(
        ids: list[str], jobs: list[dict[str, Any]], status: int) -> None:
    assert cli.wait_status(ids, jobs, any_ended=False) == status


@pytest.mark.parametrize(("ids", "jobs", "status"), [
    (["4", "2"], [RUNNING, EXIT_3], 3),            # the one that ended, not the running one
    (["4", "5", "1"], [RUNNING, QUEUED, OK], 0),
    (["3", "2"], [EXIT_3, KILLED], 143),           # both ended: the first given
    (["2", "3"], [EXIT_3, KILLED], 3),
    (["8", "6"], [HOST_DOWN, DEPENDENCY], 125),    # a host down is not an end
    (["9", "2"], [EXIT_3], 3),                     # one missing from the answer: skipped
    (["4"], [RUNNING], 255),                       # none ended (the daemon would not say so)
])
def test_any_is_the_status_of_the_first_given_job_that_ended(
        ids: list[str], jobs: list[dict[str, Any]], status: int) -> None:
    assert cli.wait_status(ids, jobs, any_ended=True) == status


# --- on the wire ----------------------------------------------------------------------------


class Daemons:
    """Each `connect` gets a fresh socket pair; the daemon's ends are kept for the test."""

    def __init__(self) -> None:
        self.ends: list[socket.socket] = []
        self.lock = threading.Lock()

    def connect(self, environ: object) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with self.lock:
            self.ends.append(theirs)
        return ours

    def answer(self, index: int, message: dict[str, Any], fds: list[int] | None = None
               ) -> None:
        """Once connection `index` is made, send `message` (and `fds`) on it."""
        helpers.wait_for(lambda: len(self.ends) > index, 30, f"connection {index}")
        distsvc.adapters.unix.send(self.ends[index], message, fds or [])

    def request(self, index: int) -> dict[str, Any]:
        message = distsvc.adapters.unix.Reader(self.ends[index]).receive()
        assert message is not None
        return message


@pytest.fixture
def daemons(monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemons]:
    scripted = Daemons()
    monkeypatch.setattr(distsvc.actions.jobs, "connect", scripted.connect)
    yield scripted
    for end in scripted.ends:
        end.close()


def test_waiter_asks_for_any_and_asks_again_after_a_restart(daemons: Daemons) -> None:
    waiter = distsvc.actions.jobs.Waiter(["4", "2"], {}, any_ended=True)
    try:
        assert waiter.poll(0.0) is None
        first = daemons.request(0)
        assert (first["type"], first["ids"], first["any"]) == ("job_wait", ["4", "2"], True)
        distsvc.adapters.unix.send(daemons.ends[0], {"type": "heartbeat"})
        daemons.ends[0].close()                # the daemon restarts
        answer = {"ok": True, "jobs": [RUNNING, EXIT_3]}
        threading.Thread(target=daemons.answer, args=(1, answer)).start()
        jobs = waiter.poll(60.0)
        again = daemons.request(1)
        assert {k: again[k] for k in ("type", "ids", "any")} == {
            "type": "job_wait", "ids": ["4", "2"], "any": True}
        assert jobs == [RUNNING, EXIT_3]
    finally:
        waiter.close()


def test_waiter_for_all_does_not_send_any(daemons: Daemons) -> None:
    waiter = distsvc.actions.jobs.Waiter(["1"], {})
    try:
        assert waiter.poll(0.0) is None
        assert "any" not in daemons.request(0)
    finally:
        waiter.close()


def test_logs_of_an_attempt_asks_for_that_attempt(daemons: Daemons, tmp_path: Path) -> None:
    (tmp_path / "stdout.1").write_bytes(b"first try\n")
    (tmp_path / "stderr.1").write_bytes(b"it failed\n")
    out_r = os.open(tmp_path / "stdout.1", os.O_RDONLY)
    err_r = os.open(tmp_path / "stderr.1", os.O_RDONLY)
    written: list[tuple[str, bytes]] = []
    thread = threading.Thread(target=daemons.answer,
                              args=(0, {"ok": True, "jobs": [EXIT_3]}, [out_r, err_r]))
    thread.start()
    try:
        distsvc.actions.jobs.read_output("2", {}, ["stdout", "stderr"], False, None,
                                         lambda name, data: written.append((name, data)),
                                         attempt=1)
    finally:
        thread.join()
        os.close(out_r)
        os.close(err_r)
    asked = daemons.request(0)
    assert (asked["type"], asked["id"], asked["attempt"]) == ("job_logs", "2", 1)
    assert b"".join(d for n, d in written if n == "stdout") == b"first try\n"
    assert b"".join(d for n, d in written if n == "stderr") == b"it failed\n"


def parse(*argv: str) -> argparse.Namespace:
    return distsvc.commands.main.parser("job").parse_args(["job", *argv])


@pytest.mark.parametrize(("argv", "start"), [
    (["logs", "--attempt", "0", "3"], "--attempt: attempts are numbered from 1"),
    (["logs", "--attempt", "1", "-f", "3"], "--attempt with --follow:"),
])
def test_logs_refusals(argv: list[str], start: str) -> None:
    with pytest.raises(distsvc.errors.UsageError) as caught:
        cli.VERBS["logs"](parse(*argv))
    assert caught.value.message.startswith(start) and "\n" not in caught.value.message


def test_wait_and_list_take_their_new_options() -> None:
    assert parse("wait", "--any", "1", "2").any is True
    assert parse("wait", "1").any is False
    args = parse("list", "--host", "h1", "--state", "queued", "--state", "dependency-failed")
    assert (args.host, args.state) == ("h1", ["queued", "dependency-failed"])
