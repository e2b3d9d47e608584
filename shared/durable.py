"""Durable appends, fsyncs and file locks: one implementation for every file whose lines stand
for something already let go of — the spools (the ingester's fallback, the gateway's outage
spool) and the ingester's dead letters. Blocking; call from a thread.

Invariants:
- ``append_durably`` writes all its bytes with ``O_APPEND`` and fsyncs before it returns, so
  whatever the caller acks afterwards is on disk.
- All or nothing: if the write or its fsync fails (ENOSPC, EIO) the file is truncated back to
  its size before the append and the error raised, so a full disk never leaves a torn line.
- A line torn by a crash is closed with a newline before the next append, so it cannot glue
  itself to the next (good) line.
- A file an append created (empty before it) is followed by an fsync of its directory, so the
  file itself survives a power loss; callers that rename call ``fsync_directory`` themselves.
- ``exclusive_flock`` holds an exclusive ``flock`` for the ``with`` block; the kernel releases
  it if the process dies, even after SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["append_durably", "exclusive_flock", "fsync_directory"]

log = logging.getLogger(__name__)


def fsync_directory(directory: Path) -> None:
    """Make a create, rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive_flock(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created if missing) for the block."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` (whole lines) to ``path``; returns once it is fsynced (see the module's
    invariants for what a failure leaves)."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # close a line torn by a crash
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            _truncate_back(fd, size)
            raise
    finally:
        os.close(fd)
    if size == 0:
        fsync_directory(path.parent)


def _truncate_back(fd: int, size: int) -> None:
    """Undo a failed append. Shrinking a file frees blocks, so this works on a full disk."""
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError:
        log.exception("could not truncate a failed append back to %d bytes", size)
