"""The daemon's host state in memory: queries answered without the file lock, the shared
state file written behind.

The state file stays the truth between processes: the scan service run without a daemon and
daemon-less clients (`DISTSVC_DAEMON=off`, a fallback) read and change it under its lock.
So the daemon's copy

- picks up what they wrote with one stat per look (`_pick_up`: microseconds, against the
  ~200 us a query may cost; a periodic check would let a query miss a placement made a
  moment before, and a burst spread worse);
- writes its own changes behind, at most every WRITE_BEHIND seconds and a tenth of the
  time (a burst of queries makes a few writes, not one each), atomically and under the lock
  as every writer does;
- never writes a stale copy over the file: a write is a three-way merge
  (`distsvc.state.merge`) of the daemon's changes since the version it last read or wrote
  onto the file as it is under the lock, and so is picking up;
- writes what is left when the daemon stops (`close`), after which the process uses the
  file directly again.

What a daemon killed outright (SIGKILL) had not written yet, one write interval's worth (50 ms,
longer with many hosts: a write takes at most a tenth of the time), is lost: placements and
measurements, which only steer the ranking for a while.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import distsvc.actions.placement
import distsvc.config
import distsvc.log
import distsvc.state

WRITE_BEHIND = 0.05  # at most one write of the file per this many seconds
# ... and at most this share of the time spent writing: with 1,000 hosts a write takes
# ~20 ms of CPU, which 20 writes a second would make 40% of a CPU.
WRITE_SHARE = 0.1


class MemoryStore:
    """The state of `directory` in memory (a distsvc.state.Store), while `open`.

    `_base` is the file as this process last read or wrote it (signature `_seen`, and a
    descriptor `_held` open on that very file: see `_hold`),
    `_current` that plus the daemon's changes; both are replaced, never changed in place
    (State.copy), under `lock`, which no I/O but a stat, or a read of a changed file, holds.

    `best` queries (`place_anonymous`) change the state through a `placement.Tally` built
    on `_current`, with no pass over its placements; whatever else looks or changes the
    state first takes the tally's changes into `_current` (`_settle`) and drops it, so the
    next query builds another: the tally serves a stream of queries, never a stale state.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._file = str(directory / distsvc.state.STATE_FILE)  # stat on every look
        self.lock = threading.Lock()
        self._base = distsvc.state.State()
        self._seen: distsvc.state.Signature | None = None
        self._held: int | None = None
        self._current = distsvc.state.State()
        self._flushing = threading.Lock()  # one write at a time
        self._writing = False  # a write is under way (under `lock`)
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self._writer: threading.Thread | None = None
        self._tally: distsvc.actions.placement.Tally | None = None

    def open(self) -> None:
        """Read the file and serve `store(directory)` from memory from now on."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        state, seen = distsvc.state.read_signed(self.directory)
        with self.lock:
            self._base, self._seen, self._current = state, self._hold(seen), state.copy()
        distsvc.state.serve_from(self.directory, self)

    def close(self) -> None:
        """Write what is left and hand the directory back to the file: a change still made
        through this object afterwards (a handler that outlived the loop) is written at once."""
        distsvc.state.serve_from(self.directory, None)
        self._closed.set()
        self._dirty.set()
        if self._writer is not None:
            self._writer.join(30)
        self._flush_logged()
        with self.lock:
            self._hold(None)

    def snapshot(self) -> distsvc.state.State:
        with self.lock:
            self._pick_up()
            return self._current.copy()

    def snapshot_if_current(self) -> distsvc.state.State | None:
        """snapshot() without reading the file: None when another process wrote it since we
        last looked (one stat), for a thread that must not wait on a file system."""
        with self.lock:
            if self._outside_write():
                return None
            self._settle()
            return self._current.copy()

    def place_anonymous(self, config: distsvc.config.Config, now: float
                        ) -> distsvc.actions.placement.Choice | None:
        """placement.choose_from_memory(config, directory, pid=0), answered by the tally
        (see the class), without reading the file: None as that declines, and when another
        process wrote the file since we last looked (one stat)."""
        with self.lock:
            if self._outside_write():
                return None
            tally = self._tally
            choice = None
            if tally is not None and tally.config is config:
                choice = tally.place(now)
            if tally is None or tally.config is not config or (
                    choice is distsvc.actions.placement.EXPIRED):  # built (again)
                self._settle()  # (a tally built again prunes what expired)
                tally = self._tally = distsvc.actions.placement.tally(config, self._current, now)
                if tally is None:
                    return None
                choice = tally.place(now)
            changed = tally.changed
            self._start_writer()
        if self._closed.is_set():
            self._flush_logged()
        elif changed and not self._dirty.is_set():
            self._dirty.set()
        return choice if isinstance(choice, distsvc.actions.placement.Choice) else None

    def _settle(self) -> None:
        """The tally's changes into `_current`, and the tally dropped (under `lock`)."""
        if self._tally is not None:
            if self._tally.changed:
                self._current = self._tally.state()
            self._tally = None

    def _start_writer(self) -> None:
        if self._writer is None and not self._closed.is_set():
            self._writer = threading.Thread(target=self._write_behind, daemon=True,
                                            name="state-writer")
            self._writer.start()

    @contextlib.contextmanager
    def update(self) -> Iterator[distsvc.state.State]:
        with self.lock:
            self._pick_up()
            state = self._current.copy()
            yield state
            if state == self._current:
                return
            self._current = state.copy()  # the caller keeps `state`: not ours to share
            self._start_writer()
        if self._closed.is_set():
            self._flush_logged()
        else:
            self._dirty.set()

    def _outside_write(self) -> bool:
        """Whether another process wrote the file since we last looked (one stat; under
        `lock`). Not while a write of ours is under way: the file may be that write."""
        return not self._writing and distsvc.state.file_signature(self._file) != self._seen

    def _pick_up(self) -> None:
        """Merge in what another process wrote since we last looked (under `lock`). Not
        while a write is under way: the file may be that write, whose changes `_base` does
        not hold yet (merged as another's, a placement removed since would come back); the
        write merges in what others wrote before it, the next look what they wrote after."""
        self._settle()
        if not self._outside_write():
            return
        theirs, seen = distsvc.state.read_signed(self.directory)
        self._current = distsvc.state.merge(self._base, self._current, theirs)
        self._base, self._seen = theirs, self._hold(seen)

    def _hold(self, seen: distsvc.state.Signature | None, held: int | None = None
              ) -> distsvc.state.Signature | None:
        """`seen` if the file now there is still the one with that signature, which is then
        held open (`held`: already open on it, as state.write_held leaves the file it wrote);
        None (the next look reads the file) if it was replaced meanwhile.

        Why: the signature says "unchanged" by inode, size and mtime, and on ext4 a file
        written by rename often gets the inode number the previous version had; with a coarse
        clock, another process's two writes within a tick could then carry our last write's
        signature, and a flush trusting it would write over them. No other file can get the
        inode number of a file held open, and every writer replaces the file whole, so while
        it is held an equal signature is the same file, unchanged. Under `lock`."""
        if self._held is not None:
            os.close(self._held)
            self._held = None
        if self._closed.is_set():  # a write after close(): nothing stays open
            if held is not None:
                os.close(held)
            return None
        if held is not None:  # the file itself, from before its rename: no window
            self._held = held
            return seen
        if seen is None:
            return None
        try:
            held = os.open(self._file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        if distsvc.state.signature_of(held) != seen:
            os.close(held)
            return None
        self._held = held
        return seen

    def flush(self) -> None:
        """Write the daemon's changes not written yet, merged onto the file under its lock."""
        with self._flushing:
            with self.lock:
                self._settle()
                base, seen, ours = self._base, self._seen, self._current.copy()
                if ours == base:
                    return  # what others wrote is picked up by the next look
                self._writing = True
            try:
                with distsvc.state.locked(self.directory):
                    # The file as we last read or wrote it is `base`: not read again (a
                    # burst of commands writes every 50 ms; reading was a third of a write).
                    theirs = base if distsvc.state.file_signature(self._file) == seen else (
                        distsvc.state.read_signed(self.directory)[0])
                    merged = distsvc.state.merge(base, ours, theirs)
                    written, held = distsvc.state.write_held(self.directory, merged)
            except BaseException:
                with self.lock:
                    self._writing = False
                raise
            with self.lock:
                # What changed here while we wrote stays a change of ours, onto the new base.
                self._settle()
                self._current = distsvc.state.merge(ours, self._current, merged)
                self._base, self._seen = merged, self._hold(written, held)
                self._writing = False

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except OSError as error:  # the runtime directory went away: the next write retries
            distsvc.log.get().warning("could not write the state file", error=str(error),
                                      path=str(self.directory / distsvc.state.STATE_FILE))

    def _write_behind(self) -> None:
        while not self._closed.is_set():
            self._dirty.wait()
            if self._closed.is_set():
                return  # close() writes the rest
            self._dirty.clear()
            started = time.monotonic()
            self._flush_logged()
            self._closed.wait(max(WRITE_BEHIND, (time.monotonic() - started) / WRITE_SHARE))
