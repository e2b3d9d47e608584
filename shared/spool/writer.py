"""Append batches of payloads to a spool file, rotating it within its cap.

A spool is named: the ingester keeps one per sink (its fallback files), the gateway one per
sink plus ``usage`` (its outage files). ``Sink`` is a ``str``, so a sink is a name as it is.

Invariants:
- ``append`` writes the whole batch (one payload per line) with one write, then flushes and
  fsyncs before it returns; the caller acknowledges stream entries only after that.
- An append is all or nothing (``shared.durable.append_durably``): if the write or its fsync
  fails (ENOSPC, EIO), the file is truncated back to its size before the append and the error
  raised, so a full disk never leaves a torn line behind (it would become a dead letter at
  replay). A new file or a rename is followed by an fsync of the directory.
- Every change to ``<name>.jsonl*`` (rotate, append, seal for replay) happens under an
  exclusive ``flock`` on ``<dir>/<name>.jsonl.lock``, so processes sharing a directory never
  interleave lines, rotate twice, or rotate a file a replayer is sealing.
- ``seal`` renames the rotating generations to sealed names (out of the rotation) and lists
  the sealed files under that same flock, so a file it returns is never appended to again.
- The file is reopened for every append, so a rotation by another process is always seen.
- Rotation follows ``shared.spool.rotation.plan_rotation``. Dropping the oldest generation
  is the only place the pipeline loses data: its records and bytes are added to the
  process-wide ``DROPPED`` counters and to the cumulative sidecar ``<dir>/<name>.dropped.json``
  (readable by any process) and logged at ERROR.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import msgspec

from shared.durable import append_durably, exclusive_flock, fsync_directory
from shared.spool.reader import count_lines
from shared.spool.rotation import (
    Rotation,
    generation_name,
    parse_generation,
    plan_rotation,
    replay_order,
    sealed_name,
)

__all__ = [
    "DROPPED",
    "DroppedTotals",
    "SpoolWriter",
    "dropped_sidecar_path",
    "pending_files",
    "read_dropped",
    "seal",
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
    """Process-wide totals per spool name, for ``status`` and metrics. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, DroppedTotals] = {}

    def add(self, name: str, records: int, size: int, at_ms: int) -> None:
        with self._lock:
            t = self._totals.setdefault(name, DroppedTotals())
            t.files, t.records, t.bytes = t.files + 1, t.records + records, t.bytes + size
            t.last_dropped_at_ms = at_ms

    def get(self, name: str) -> DroppedTotals:
        with self._lock:
            t = self._totals.get(name, DroppedTotals())
            return DroppedTotals(t.files, t.records, t.bytes, t.last_dropped_at_ms)


DROPPED = _DropCounters()

_sidecar_decoder = msgspec.json.Decoder(DroppedTotals)


def spool_path(directory: Path, name: str, generation: int = 0) -> Path:
    return directory / generation_name(name, generation)


def dropped_sidecar_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.dropped.json"


def read_dropped(directory: Path, name: str) -> DroppedTotals:
    """Cumulative drops of spool ``name`` in ``directory`` across all processes (zeros if none)."""
    try:
        return _sidecar_decoder.decode(dropped_sidecar_path(directory, name).read_bytes())
    except FileNotFoundError:
        return DroppedTotals()


@contextlib.contextmanager
def spool_flock(directory: Path, name: str) -> Iterator[None]:
    """Hold the spool's writer lock: no append or rotation runs meanwhile, in any process."""
    with exclusive_flock(directory / f"{name}.jsonl.lock"):
        yield


def pending_files(directory: Path, name: str) -> list[Path]:
    """Sealed and rotating files of spool ``name``, oldest first (what a replay would send)."""
    if not directory.is_dir():
        return []
    return [directory / n for n in replay_order(name, os.listdir(directory))]


def seal(directory: Path, name: str) -> list[Path]:
    """Move every rotating generation of ``name`` out of the writers' way (renamed to sealed
    names, oldest first) and return every sealed file, oldest first, as listed under the
    writers' flock: no file in the list can be appended to or rotated afterwards."""
    with spool_flock(directory, name):
        listing = os.listdir(directory)
        rotating = [n for n in listing if parse_generation(name, n) is not None]
        if rotating:
            sealed_at = time.time_ns()
            for rank, current in enumerate(replay_order(name, rotating)):
                os.rename(directory / current, directory / sealed_name(name, sealed_at, rank))
            fsync_directory(directory)
            log.info("sealed %d spool files of %s for replay", len(rotating), name)
            listing = os.listdir(directory)
        return [directory / n for n in replay_order(name, listing)]


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


class SpoolWriter:
    """The rotating files of one spool name. Blocking; safe to share between threads."""

    def __init__(
        self, directory: Path, name: str, *, cap_bytes: int = 100 * 2**20, generations: int = 3
    ) -> None:
        if cap_bytes <= 0 or generations < 1:
            raise ValueError("cap_bytes > 0 and generations >= 1 required")
        self.directory = directory
        self.name = name
        self.cap_bytes = cap_bytes
        self.generations = generations
        self.path = spool_path(directory, name)
        self._thread_lock = threading.Lock()

    def append(self, payloads: Sequence[bytes]) -> None:
        """Write ``payloads`` durably; returns only once they are fsynced."""
        if not payloads:
            return
        if any(b"\n" in p for p in payloads):
            raise ValueError("a spool payload must not contain a newline")
        data = b"\n".join(payloads) + b"\n"
        with self._thread_lock, spool_flock(self.directory, self.name):
            rotation = plan_rotation(self._sizes(), len(data), self.cap_bytes, self.generations)
            if rotation.needed:
                self._rotate(rotation)
            append_durably(self.path, data)

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
        return spool_path(self.directory, self.name, generation)

    def _drop(self, path: Path) -> None:
        size = path.stat().st_size
        records = count_lines(path)
        path.unlink()
        now_ms = int(time.time() * 1000)
        DROPPED.add(self.name, records, size, now_ms)
        totals = read_dropped(self.directory, self.name)
        totals = DroppedTotals(
            totals.files + 1, totals.records + records, totals.bytes + size, now_ms
        )
        self._write_sidecar(totals)
        log.error(
            "spool full, dropped oldest generation: spool=%s file=%s records=%d bytes=%d "
            "cumulative_records=%d cumulative_bytes=%d",
            self.name,
            path.name,
            records,
            size,
            totals.records,
            totals.bytes,
        )

    def _write_sidecar(self, totals: DroppedTotals) -> None:
        target = dropped_sidecar_path(self.directory, self.name)
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("wb") as f:
            f.write(msgspec.json.encode(totals))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def close(self) -> None:
        """Nothing is held between appends; kept so owners can treat sinks alike."""

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
