"""The replay lock ``<dir>/<sink>.replaying``: at most one replayer per sink at a time.

How it works: the file is created with ``O_CREAT | O_EXCL`` and holds JSON
``{owner, heartbeat, started, file, offset}`` (owner is ``host:pid:uuid``; ``file``/``offset``
are the replay's last confirmed position). The holder keeps an exclusive ``flock`` on it for
its whole life and refreshes the heartbeat (a background thread, and after every confirmed
batch). The flock *is* the lock; the JSON is best effort: when it cannot be written (ENOSPC on
a full spool disk) the holder keeps the lock, logs and counts the failure, and writes it at
the next heartbeat that succeeds, so a full disk never stops the replay that would free it.
A lock whose flock nobody holds is broken at once when its owner ran on this host and its pid
is gone; otherwise it is *stale* when its heartbeat (or the file's mtime, whichever is newer)
is older than ``stale_after_s``. Breaking one: take the flock on the stale
file, re-check staleness, check that the path still names the same inode (``os.stat`` vs
``os.fstat``), unlink, then compete for a fresh ``O_EXCL`` create like everyone else. A new
holder also checks, once it has the flock, that the path still names its own inode.

What it guarantees:
- On one host (a local file system), two live processes never both hold the lock: the kernel
  releases a dead process's flock at once (even after SIGKILL), and a live holder's flock can
  be neither taken nor broken. Two breakers of one stale file cannot both win: only one
  ``O_EXCL`` create succeeds, and a breaker that flocked an already-unlinked inode sees the
  mismatch and starts over.
- A holder that died leaves a file that is broken at the next attempt on its own host, or once
  its heartbeat is ``stale_after_s`` old from another host; the breaker gets the dead holder's
  last confirmed position as ``inherited``.
- ``acquire`` never leaks: whatever fails after the create, the descriptor is closed (which
  drops the flock) and the file it created is unlinked.
- Across hosts sharing a directory, where flock may not be shared, only the heartbeat protects:
  a holder paused for longer than ``stale_after_s`` could be broken while alive. Replay stays
  correct even then (tables deduplicate by record identity); the lock only saves work.
- Heartbeats are not fsynced: after a power loss the resume point may be older, never newer.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ingester.metrics import ingester_events
from shared.streams import Sink

__all__ = [
    "LockState",
    "LockView",
    "ReplayLock",
    "break_decision",
    "default_owner",
    "inspect_lock",
    "is_stale",
    "lock_path",
    "pid_alive",
    "read_lock",
]

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


def owner_host_pid(owner: str) -> tuple[str, int | None]:
    """``host:pid:uuid`` → (host, pid); pid None when the owner is not in that form."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return owner, None
    return parts[0], int(parts[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def break_decision(
    state: LockState | None,
    mtime: float,
    now: float,
    stale_after_s: float,
    *,
    host: str,
    alive: bool | None,
) -> tuple[bool, str]:
    """Whether a lock file whose flock nobody holds may be broken now, and why (or when it
    will be). ``alive``: whether the owner's pid runs on this ``host`` (None: not ours)."""
    if state is None:
        age = now - mtime
        if age > stale_after_s:
            return True, f"empty or unreadable lock file, last written {age:.0f}s ago"
        wait = stale_after_s - age
        return False, f"empty lock file {age:.0f}s old, being created or broken in {wait:.0f}s"
    owner_host, pid = owner_host_pid(state.owner)
    if owner_host == host and pid is not None and alive is False:
        return True, f"its process {pid} is gone"
    last = max(state.heartbeat, mtime)
    if is_stale(state, mtime, now, stale_after_s):
        return True, f"no heartbeat for {now - last:.0f}s"
    where = "" if owner_host == host else f" on {owner_host}"
    wait = stale_after_s - (now - last)
    return (
        False,
        f"heartbeat{where} {now - last:.0f}s ago; broken after {stale_after_s:.0f}s "
        f"without one (in {wait:.0f}s)",
    )


def _read_state(fd: int) -> LockState | None:
    raw = os.pread(fd, _MAX_STATE_BYTES, 0).strip()
    try:
        return _decoder.decode(raw) if raw else None
    except msgspec.DecodeError:
        return None


def read_lock(directory: Path, sink: Sink) -> LockState | None:
    """The current holder's state (``None``: no lock, or its content is empty or unreadable)."""
    view = inspect_lock(directory, sink)
    return view.state if view is not None else None


@dataclass(frozen=True)
class LockView:
    """What ``status`` shows of a lock file: its state if readable, its mtime, and whether a
    live process holds its flock (on this host: then it is never broken)."""

    state: LockState | None
    mtime: float
    held: bool

    def describe(self, now: float, stale_after_s: float) -> str:
        owner = self.state.owner if self.state else "unknown owner (lock file empty)"
        if self.held:
            beat = f", heartbeat {now - self.state.heartbeat:.0f}s ago" if self.state else ""
            return f"{owner}: held by a live process{beat}"
        host = socket.gethostname()
        pid = owner_host_pid(self.state.owner)[1] if self.state else None
        alive = pid_alive(pid) if pid is not None else None
        breaks, why = break_decision(
            self.state, self.mtime, now, stale_after_s, host=host, alive=alive
        )
        return f"{owner}: not held, {'broken at the next replay: ' if breaks else ''}{why}"


def inspect_lock(directory: Path, sink: Sink) -> LockView | None:
    """The lock file as it is now (``None``: there is none). Probes the flock with a shared,
    non-blocking lock dropped at once, so it never delays a holder."""
    try:
        fd = os.open(lock_path(directory, sink), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            held = False
        except BlockingIOError:
            held = True
        return LockView(_read_state(fd), os.fstat(fd).st_mtime, held)
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
    could not be read) and ``blocked_reason`` says why it holds and when it would be broken.
    After breaking a stale lock, ``inherited`` is the dead holder's state.
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
        self.blocked_reason = ""
        self.inherited: LockState | None = None
        self._fd: int | None = None
        self._state: LockState | None = None
        self._io = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._written = 0
        self.counters = ingester_events("lock", "heartbeat_failures")
        """``heartbeat_failures``: heartbeats (the first write included) that could not be
        written; the lock is kept."""

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def holder(self) -> str:
        """Who blocked the last ``acquire``, and why, in one line for on-call."""
        owner = self.blocked_by.owner if self.blocked_by else "an unknown owner"
        return f"{owner} ({self.blocked_reason})" if self.blocked_reason else owner

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
            if self._hold_or_undo(fd):
                return True
        self.blocked_by = read_lock(self.directory, self.sink)
        self.blocked_reason = "lost every round to other replayers"
        return False

    def _hold_or_undo(self, fd: int) -> bool:
        """``_hold``, but whatever escapes it leaves neither the descriptor nor our file."""
        try:
            return self._hold(fd)
        except BaseException:
            self._stop.set()
            if self._fd == fd:
                self._fd, self._state = None, None
            with contextlib.suppress(OSError):
                if _same_file(self.path, fd):
                    os.unlink(self.path)
            os.close(fd)
            raise

    def _hold(self, fd: int) -> bool:
        """Take the flock on our new file; ``False`` if it was broken before we got it."""
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not _same_file(self.path, fd):
            os.close(fd)
            return False
        now = time.time()
        self._fd = fd
        self._state = LockState(owner=self.owner, heartbeat=now, started=now)
        self.heartbeat()
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
                self.blocked_reason = "held by a live process"
                return False
            if not _same_file(self.path, fd):
                return True
            state = _read_state(fd)
            pid = owner_host_pid(state.owner)[1] if state else None
            breaks, why = break_decision(
                state,
                os.fstat(fd).st_mtime,
                time.time(),
                self.stale_after_s,
                host=socket.gethostname(),
                alive=pid_alive(pid) if pid is not None else None,
            )
            if not breaks:
                self.blocked_by, self.blocked_reason = state, why
                return False
            os.unlink(self.path)
            self.inherited = state
            owner = state.owner if state else "unknown"
            log.warning("broke replay lock %s of owner %s: %s", self.path, owner, why)
            return True
        finally:
            os.close(fd)

    def heartbeat(self, *, file: str | None = None, offset: int | None = None) -> bool:
        """Refresh the heartbeat, and record the last confirmed position when given. A write
        that fails (a full disk) is logged and counted, never raised: the flock still holds,
        and the next heartbeat writes the state again. ``False`` when it failed."""
        with self._io:
            if self._state is None:
                return False
            self._state.heartbeat = time.time()
            if file is not None:
                self._state.file = file
            if offset is not None:
                self._state.offset = offset
            try:
                self._write_locked()
            except OSError as exc:
                self.counters.inc("heartbeat_failures")
                failures = self.counters.get("heartbeat_failures")
                if failures == 1 or failures % 100 == 0:
                    log.warning(
                        "replay lock %s: state not written (%d failures so far), lock kept: %s",
                        self.path,
                        failures,
                        exc,
                    )
                return False
            return True

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
            self.heartbeat()

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
