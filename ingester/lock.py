"""The replay lock ``<dir>/<sink>.replaying``: at most one replayer per sink at a time.

How it works: the file is created with ``O_CREAT | O_EXCL`` and holds JSON
``{owner, heartbeat, started, file, offset}`` (owner is ``host:pid:uuid``; ``file``/``offset``
are the replay's last confirmed position). The holder keeps an exclusive ``flock`` on it for
its whole life and refreshes the heartbeat (a background thread, and after every confirmed
batch). A lock is *stale* when its heartbeat (or the file's mtime, whichever is newer) is older
than ``stale_after_s`` **and** nobody holds its flock. Breaking one: take the flock on the stale
file, re-check staleness, check that the path still names the same inode (``os.stat`` vs
``os.fstat``), unlink, then compete for a fresh ``O_EXCL`` create like everyone else. A new
holder also checks, once it has the flock, that the path still names its own inode.

What it guarantees:
- On one host (a local file system), two live processes never both hold the lock: the kernel
  releases a dead process's flock at once (even after SIGKILL), and a live holder's flock can
  be neither taken nor broken. Two breakers of one stale file cannot both win: only one
  ``O_EXCL`` create succeeds, and a breaker that flocked an already-unlinked inode sees the
  mismatch and starts over.
- A holder that died leaves a file that is broken once its heartbeat is ``stale_after_s`` old;
  the breaker gets the dead holder's last confirmed position as ``inherited``.
- Across hosts sharing a directory, where flock may not be shared, only the heartbeat protects:
  a holder paused for longer than ``stale_after_s`` could be broken while alive. Replay stays
  correct even then (tables deduplicate by record identity); the lock only saves work.
- Heartbeats are not fsynced: after a power loss the resume point may be older, never newer.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import msgspec

from shared.streams import Sink

__all__ = ["LockState", "ReplayLock", "default_owner", "is_stale", "lock_path", "read_lock"]

log = logging.getLogger(__name__)

_ACQUIRE_ATTEMPTS = 5
"""Create/break rounds before giving up: each lost round means another process won."""

_MAX_STATE_BYTES = 1 << 16


class LockState(msgspec.Struct):
    owner: str
    heartbeat: float
    started: float
    file: str = ""
    offset: int = 0


_decoder = msgspec.json.Decoder(LockState)


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"


def lock_path(directory: Path, sink: Sink) -> Path:
    return directory / f"{sink.value}.replaying"


def is_stale(state: LockState | None, mtime: float, now: float, stale_after_s: float) -> bool:
    """Whether the last sign of life is older than ``stale_after_s``. The file's mtime counts
    too, so a lock whose content is not written yet (or torn) is fresh while it is new."""
    last = max(state.heartbeat if state else 0.0, mtime)
    return now - last > stale_after_s


def _read_state(fd: int) -> LockState | None:
    raw = os.pread(fd, _MAX_STATE_BYTES, 0).strip()
    try:
        return _decoder.decode(raw) if raw else None
    except msgspec.DecodeError:
        return None


def read_lock(directory: Path, sink: Sink) -> LockState | None:
    """The current holder's state, for ``status`` (``None``: no lock or unreadable)."""
    try:
        fd = os.open(lock_path(directory, sink), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return _read_state(fd)
    finally:
        os.close(fd)


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


class ReplayLock:
    """One attempt to hold a sink's replay lock; ``acquire`` once, ``release`` when done.

    After a failed ``acquire``, ``blocked_by`` is the live holder's state (``None`` if it
    could not be read). After breaking a stale lock, ``inherited`` is the dead holder's state.
    """

    def __init__(
        self,
        directory: Path,
        sink: Sink,
        *,
        stale_after_s: float = 30.0,
        owner: str | None = None,
    ) -> None:
        self.directory = directory
        self.sink = sink
        self.path = lock_path(directory, sink)
        self.stale_after_s = stale_after_s
        self.owner = owner or default_owner()
        self.blocked_by: LockState | None = None
        self.inherited: LockState | None = None
        self._fd: int | None = None
        self._state: LockState | None = None
        self._io = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._written = 0
        self.heartbeat_failures = 0

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        if self._fd is not None:
            raise RuntimeError("lock already held by this object")
        for _ in range(_ACQUIRE_ATTEMPTS):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if self._try_break():
                    continue
                return False
            if self._hold(fd):
                return True
        self.blocked_by = read_lock(self.directory, self.sink)
        return False

    def _hold(self, fd: int) -> bool:
        """Take the flock on our new file; ``False`` if it was broken before we got it."""
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not _same_file(self.path, fd):
            os.close(fd)
            return False
        now = time.time()
        self._fd = fd
        self._state = LockState(owner=self.owner, heartbeat=now, started=now)
        self._write()
        self._stop.clear()
        self._beat = threading.Thread(
            target=self._beat_loop, name=f"heartbeat {self.path.name}", daemon=True
        )
        self._beat.start()
        return True

    def _try_break(self) -> bool:
        """``True``: the path is free now (broken or gone), try creating again."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.blocked_by = _read_state(fd)
                return False
            if not _same_file(self.path, fd):
                return True
            state = _read_state(fd)
            if not is_stale(state, os.fstat(fd).st_mtime, time.time(), self.stale_after_s):
                self.blocked_by = state
                return False
            os.unlink(self.path)
            self.inherited = state
            log.warning(
                "broke stale replay lock %s of owner=%s (heartbeat %.1fs old)",
                self.path,
                state.owner if state else "?",
                time.time() - (state.heartbeat if state else 0.0),
            )
            return True
        finally:
            os.close(fd)

    def heartbeat(self, *, file: str | None = None, offset: int | None = None) -> None:
        """Refresh the heartbeat, and record the last confirmed position when given."""
        with self._io:
            if self._state is None:
                return
            self._state.heartbeat = time.time()
            if file is not None:
                self._state.file = file
            if offset is not None:
                self._state.offset = offset
            self._write_locked()

    def _write(self) -> None:
        with self._io:
            self._write_locked()

    def _write_locked(self) -> None:
        """Overwrite in place: a rename would swap the inode out from under our flock. The
        padding keeps the file length from shrinking, so no stale tail can follow the JSON."""
        if self._fd is None or self._state is None:
            raise RuntimeError("replay lock not held")
        data = msgspec.json.encode(self._state)
        data = data.ljust(self._written)
        os.pwrite(self._fd, data, 0)
        self._written = len(data)

    def _beat_loop(self) -> None:
        interval = max(self.stale_after_s / 3, 0.05)
        while not self._stop.wait(interval):
            try:
                self.heartbeat()
            except OSError:
                self.heartbeat_failures += 1
                log.exception("replay lock heartbeat failed: %s", self.path)

    def release(self) -> None:
        """Unlink the file (if it is still ours) and drop the flock. Idempotent."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        with self._io:
            fd, self._fd, self._state = self._fd, None, None
            if fd is None:
                return
            try:
                if _same_file(self.path, fd):
                    os.unlink(self.path)
                else:
                    log.error("replay lock %s was replaced while held by %s", self.path, self.owner)
            finally:
                os.close(fd)

    def __enter__(self) -> ReplayLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
