"""Append batches of payloads to a sink's spool file, rotating it within its cap.

Invariants:
- ``append`` writes the whole batch (one payload per line) with one write, then flushes and
  fsyncs before it returns; the caller acknowledges stream entries only after that.
- An append is all or nothing: if the write or its fsync fails (ENOSPC, EIO), the file is
  truncated back to its size before the append and the error raised, so a full disk never
  leaves a torn line behind (it would become a dead letter at replay). A new file
  or a rename is followed by an fsync of the directory.
- Every change to ``<sink>.jsonl*`` (rotate, append, seal for replay) happens under an
  exclusive ``flock`` on ``<dir>/<sink>.jsonl.lock``, so processes sharing a directory never
  interleave lines, rotate twice, or rotate a file a replayer is sealing.
- The file is reopened for every append, so a rotation by another process is always seen.
- A line torn by a crash is closed with a newline before the next append, so it cannot glue
  itself to the next (good) payload.
- Rotation follows ``ingester.spool.rotation.plan_rotation``. Dropping the oldest generation
  is the only place the pipeline loses data: its records and bytes are added to the
  process-wide ``DROPPED`` counters and to the cumulative sidecar ``<dir>/<sink>.dropped.json``
  (readable by any process) and logged at ERROR.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import msgspec

from ingester.spool.reader import count_lines
from ingester.spool.rotation import Rotation, generation_name, plan_rotation
from shared.streams import Sink

__all__ = [
    "DROPPED",
    "DroppedTotals",
    "SpoolWriter",
    "dropped_sidecar_path",
    "fsync_directory",
    "read_dropped",
    "spool_flock",
    "spool_path",
]

log = logging.getLogger(__name__)


class DroppedTotals(msgspec.Struct):
    """What rotation dropped: files, records (lines) and bytes."""

    files: int = 0
    records: int = 0
    bytes: int = 0
    last_dropped_at_ms: int = 0


class _DropCounters:
    """Process-wide totals per sink, for ``status`` and metrics. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[Sink, DroppedTotals] = {}

    def add(self, sink: Sink, records: int, size: int, at_ms: int) -> None:
        with self._lock:
            t = self._totals.setdefault(sink, DroppedTotals())
            t.files, t.records, t.bytes = t.files + 1, t.records + records, t.bytes + size
            t.last_dropped_at_ms = at_ms

    def get(self, sink: Sink) -> DroppedTotals:
        with self._lock:
            t = self._totals.get(sink, DroppedTotals())
            return DroppedTotals(t.files, t.records, t.bytes, t.last_dropped_at_ms)


DROPPED = _DropCounters()

_sidecar_decoder = msgspec.json.Decoder(DroppedTotals)


def spool_path(directory: Path, sink: Sink, generation: int = 0) -> Path:
    return directory / generation_name(sink.value, generation)


def dropped_sidecar_path(directory: Path, sink: Sink) -> Path:
    return directory / f"{sink.value}.dropped.json"


def read_dropped(directory: Path, sink: Sink) -> DroppedTotals:
    """Cumulative drops of ``sink`` in ``directory`` across all processes (zeros if none)."""
    try:
        return _sidecar_decoder.decode(dropped_sidecar_path(directory, sink).read_bytes())
    except FileNotFoundError:
        return DroppedTotals()


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def spool_flock(directory: Path, sink: Sink) -> Iterator[None]:
    """Hold the sink's writer lock: no append or rotation runs meanwhile, in any process."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / f"{sink.value}.jsonl.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _truncate_back(fd: int, size: int) -> None:
    """Undo a failed append. Shrinking a file frees blocks, so this works on a full disk."""
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError:
        log.exception("could not truncate a failed spool append back to %d bytes", size)


class SpoolWriter:
    """The fallback file of one sink. Blocking; safe to share between threads."""

    def __init__(
        self, directory: Path, sink: Sink, *, cap_bytes: int = 100 * 2**20, generations: int = 3
    ) -> None:
        if cap_bytes <= 0 or generations < 1:
            raise ValueError("cap_bytes > 0 and generations >= 1 required")
        self.directory = directory
        self.sink = sink
        self.cap_bytes = cap_bytes
        self.generations = generations
        self.path = spool_path(directory, sink)
        self._thread_lock = threading.Lock()

    def append(self, payloads: Sequence[bytes]) -> None:
        """Write ``payloads`` durably; returns only once they are fsynced."""
        if not payloads:
            return
        if any(b"\n" in p for p in payloads):
            raise ValueError("a spool payload must not contain a newline")
        data = b"\n".join(payloads) + b"\n"
        with self._thread_lock, spool_flock(self.directory, self.sink):
            rotation = plan_rotation(self._sizes(), len(data), self.cap_bytes, self.generations)
            if rotation.needed:
                self._rotate(rotation)
            self._write(data)

    def sizes(self) -> list[int | None]:
        """Current size of each generation (``None``: absent), newest first."""
        return self._sizes()

    def _sizes(self) -> list[int | None]:
        return [_size(self._gen(g)) for g in range(self.generations)]

    def _rotate(self, rotation: Rotation) -> None:
        if rotation.drop is not None:
            self._drop(self._gen(rotation.drop))
        for src, dst in rotation.renames:
            os.rename(self._gen(src), self._gen(dst))
        fsync_directory(self.directory)

    def _gen(self, generation: int) -> Path:
        return spool_path(self.directory, self.sink, generation)

    def _drop(self, path: Path) -> None:
        size = path.stat().st_size
        records = count_lines(path)
        path.unlink()
        now_ms = int(time.time() * 1000)
        DROPPED.add(self.sink, records, size, now_ms)
        totals = read_dropped(self.directory, self.sink)
        totals = DroppedTotals(
            totals.files + 1, totals.records + records, totals.bytes + size, now_ms
        )
        self._write_sidecar(totals)
        log.error(
            "spool full, dropped oldest generation: sink=%s file=%s records=%d bytes=%d "
            "cumulative_records=%d cumulative_bytes=%d",
            self.sink,
            path.name,
            records,
            size,
            totals.records,
            totals.bytes,
        )

    def _write_sidecar(self, totals: DroppedTotals) -> None:
        target = dropped_sidecar_path(self.directory, self.sink)
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("wb") as f:
            f.write(msgspec.json.encode(totals))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def _write(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
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
            fsync_directory(self.directory)

    def close(self) -> None:
        """Nothing is held between appends; kept so owners can treat sinks alike."""

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
