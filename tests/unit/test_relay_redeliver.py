"""A signal that came before the command was there is delivered again (relay.REDELIVER_AFTER).

`distsvc run --all yes | head` through the daemon once did not exit: the SIGTERM for a host
whose exec request had just been answered reached it while its wrapper had yet to start `yes`
(a loaded host), so the kill command found no process to signal, `yes` started after it, and
the relay relayed it for ever.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest
from test_relay_memory import Stream  # the relay's Process seam, without SSH

import distsvc.actions.relay as relay


class StartsLate(Stream):
    """A command whose first delivery finds nothing (it is not there yet) and which runs, with
    output, until a later delivery ends it."""

    def __init__(self) -> None:
        super().__init__(1 << 62)
        self.deliveries: list[int] = []
        self.ended = threading.Event()

    def deliver(self, signum: int) -> None:
        self.deliveries.append(signum)
        if len(self.deliveries) > 1:
            self.ended.set()

    def read_stdout(self) -> bytes:
        return b"" if self.ended.is_set() else b"y\n"

    def finished(self) -> bool:
        return self.ended.is_set()

    def exit_status(self) -> int:
        return 128 + signal.SIGTERM


def test_a_signal_that_found_no_command_yet_is_delivered_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay, "REDELIVER_AFTER", 0.05, raising=False)
    process = StartsLate()
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    events = relay.EventQueue()
    events.add(signal.SIGTERM)  # `| head` closed: the run ends every command
    statuses: list[int] = []
    thread = threading.Thread(target=lambda: statuses.append(relay.relay(
        process, (None, write_fd, write_fd), None, process.deliver, events)), daemon=True)
    thread.start()
    try:
        for _ in range(100):  # the reader takes the output meanwhile, as run --all's does
            if process.ended.wait(0.05):
                break
            try:
                while os.read(read_fd, 65536):
                    pass
            except BlockingIOError:
                pass
        assert process.deliveries == [signal.SIGTERM, signal.SIGTERM]
        thread.join(10)
        assert statuses == [128 + signal.SIGTERM]
    finally:
        process.ended.set()  # without the fix the relay waits for ever: let it end
        thread.join(10)
        os.close(read_fd)
        os.close(write_fd)
        events.close_pipe()
        process.close()
