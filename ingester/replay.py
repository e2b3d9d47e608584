"""Replay a sink's spool into ClickHouse under the sink's replay lock.

Invariants:
- One replayer per sink at a time (``ingester.lock.ReplayLock``); a replayer that finds the
  lock held by a live owner does nothing and reports who holds it. The lock is released when
  ``replay`` returns or raises.
- Sealing: under the writer's flock, the rotating files are renamed to unique sealed names
  (``<sink>.jsonl.replay.<ns>.<rank>``, oldest first), so writers start a fresh ``.jsonl`` and
  rotation never touches a file being replayed. Sealed files left by a crashed replayer are
  replayed too, before anything newer. The replay list is taken under that same flock and
  holds sealed files only: a ``.jsonl`` a writer creates after the seal is never replayed (or
  deleted) by this run, it waits for the next one.
- Files are replayed oldest first in batches of ``batch_records``, and the batches go to
  ClickHouse ``insert_records`` at a time in one INSERT (``Delivery.append_groups``): the server
  writes them as one part, which costs it less than half the CPU per record of a part per
  batch. After each confirmed insert the file and byte offset go into the lock file, so a
  replayer that breaks a dead one's lock resumes after its last confirmed insert. Re-inserting
  is harmless anyway (tables deduplicate by record identity); resuming only saves work.
- An insert of several batches that fails (poison, or ClickHouse away) is not retried whole:
  its bytes are read again and go a batch per insert through ``Delivery.append``, which
  retries and sets poison aside exactly as the stream consumer's deliveries do.
- A file is deleted only after every one of its batches was confirmed (inserted or
  dead-lettered by ``Delivery``). ``SinkUnavailableError`` stops the replay and keeps the files.
- Memory stays flat: files are streamed one batch at a time (``shared.spool.reader``), each
  decoded when its insert asks for it (one batch in hand, whatever ``insert_records`` is: the
  server gathers the insert), and batches are inserted and confirmed strictly in file order.
  No helper thread decodes ahead: the sink's two connections already keep ClickHouse busy
  while this thread works, and a second thread taking turns at the GIL cost more than it
  overlapped (``bench.replay``, 200,000 records, alternated: 37,200 -> 40,500 records/s
  unpinned, 44,100 -> 46,500 into a Null table, equal pinned).
- ``dry_run`` counts files, records and bytes and changes nothing (no lock, no rename).
- A file-system error (a full disk, a permission) ends the replay with ``FAILED`` and its
  reason, the files kept and the lock released: never a traceback for on-call.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import chain, islice
from pathlib import Path

from ingester.decode import PreparedBatch, prepare
from ingester.delivery import Delivery, DeliveryReport
from ingester.lock import ReplayLock, read_lock
from shared.durable import fsync_directory
from shared.errors import PipelineError, SinkUnavailableError
from shared.spool.reader import SpoolBatch, count_lines, read_batches
from shared.spool.writer import pending_files, seal
from shared.streams import Sink

__all__ = ["Progress", "ReplayReport", "ReplayStatus", "Replayer", "pending_files"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""``progress(done, total)`` in bytes of spool files, called after every confirmed batch."""


class ReplayStatus(StrEnum):
    DONE = "done"  # every file found was replayed and deleted (or there was none)
    LOCKED = "locked"  # another live replayer holds the lock; nothing done
    UNAVAILABLE = "unavailable"  # ClickHouse stopped answering; the rest is kept for later
    DRY_RUN = "dry_run"  # counted only
    FAILED = "failed"  # a file-system error (e.g. ENOSPC); the rest is kept for later


@dataclass(frozen=True)
class ReplayReport:
    """``records``/``bytes``: confirmed in a replay, found in a dry run."""

    sink: Sink
    status: ReplayStatus
    files: int = 0
    files_done: int = 0
    records: int = 0
    bytes: int = 0
    inserted: int = 0
    dead_lettered: int = 0
    locked_by: str = ""
    error: str = ""

    def __str__(self) -> str:
        if self.status is ReplayStatus.LOCKED:
            return f"{self.sink}: locked by {self.locked_by}"
        text = (
            f"{self.sink}: {self.status} files={self.files_done}/{self.files} "
            f"records={self.records} bytes={self.bytes} inserted={self.inserted} "
            f"dead_lettered={self.dead_lettered}"
        )
        return f"{text} error={self.error}" if self.error else text


@dataclass
class _Tally:
    files: int = 0
    files_done: int = 0
    records: int = 0
    bytes_done: int = 0
    inserted: int = 0
    dead_lettered: int = 0
    total_bytes: int = 0
    progress: Progress | None = field(default=None, repr=False)

    def report(self, sink: Sink, status: ReplayStatus, error: str = "") -> ReplayReport:
        return ReplayReport(
            sink,
            status,
            files=self.files,
            files_done=self.files_done,
            records=self.records,
            bytes=self.bytes_done,
            inserted=self.inserted,
            dead_lettered=self.dead_lettered,
            error=error,
        )

    def advance(self, size: int) -> None:
        self.bytes_done += size
        if self.progress is not None:
            self.progress(self.bytes_done, self.total_bytes)


class Replayer:
    """Replays one sink's spool directory through a ``Delivery``. Blocking; call from a thread."""

    def __init__(
        self,
        directory: Path,
        sink: Sink,
        delivery: Delivery,
        *,
        batch_records: int = 5000,
        insert_records: int = 50_000,
        stale_after_s: float = 30.0,
    ) -> None:
        if batch_records < 1:
            raise ValueError("batch_records must be >= 1")
        self.directory = directory
        self.sink = sink
        self.delivery = delivery
        self.batch_records = batch_records
        self.stale_after_s = stale_after_s
        self._group_size = max(1, insert_records // batch_records)  # batches per insert

    def replay(self, *, dry_run: bool = False, progress: Progress | None = None) -> ReplayReport:
        if dry_run:
            return self._dry_run()
        lock = ReplayLock(self.directory, self.sink, stale_after_s=self.stale_after_s)
        try:
            if not lock.acquire():
                log.info("replay of %s skipped: lock held by %s", self.sink, lock.holder)
                return ReplayReport(self.sink, ReplayStatus.LOCKED, locked_by=lock.holder)
            return self._replay_locked(lock, progress)
        except OSError as exc:
            log.error("replay of %s failed, spool files kept: %s", self.sink, exc)
            return ReplayReport(self.sink, ReplayStatus.FAILED, error=str(exc))
        finally:
            lock.release()

    def _dry_run(self) -> ReplayReport:
        files = [p for p in pending_files(self.directory, self.sink) if p.is_file()]
        holder = read_lock(self.directory, self.sink)
        return ReplayReport(
            self.sink,
            ReplayStatus.DRY_RUN,
            files=len(files),
            records=sum(count_lines(p) for p in files),
            bytes=sum(p.stat().st_size for p in files),
            locked_by=holder.owner if holder else "",
        )

    def _replay_locked(self, lock: ReplayLock, progress: Progress | None) -> ReplayReport:
        files = seal(self.directory, self.sink)
        tally = _Tally(
            files=len(files), total_bytes=sum(p.stat().st_size for p in files), progress=progress
        )
        resume = lock.inherited
        started = time.monotonic()
        try:
            for path in files:
                start = resume.offset if resume is not None and resume.file == path.name else 0
                self._replay_file(path, start, lock, tally)
        except SinkUnavailableError as exc:
            log.warning("replay of %s stopped, clickhouse unavailable: %s", self.sink, exc)
            return tally.report(self.sink, ReplayStatus.UNAVAILABLE, error=str(exc))
        log.info(
            "replayed %s: %d files, %d records in %.1fs",
            self.sink,
            tally.files_done,
            tally.records,
            time.monotonic() - started,
        )
        return tally.report(self.sink, ReplayStatus.DONE)

    def _replay_file(self, path: Path, start: int, lock: ReplayLock, tally: _Tally) -> None:
        if start:
            log.info("resuming %s at byte %d", path.name, start)
            tally.advance(start)
        offset = start
        batches = read_batches(path, self.batch_records, start_offset=start)
        started: deque[_Group] = deque()  # groups handed to the delivery, oldest first

        def groups() -> Iterator[Iterator[PreparedBatch]]:
            for group in _groups(self.sink, batches, self._group_size):
                started.append(group)
                yield group.prepared()

        for outcome in self.delivery.append_groups(self.sink, groups()):
            group = started.popleft()
            if isinstance(outcome, PipelineError):
                group.drain()  # what its insert did not take, so its end is its own
                log.warning(
                    "replay of %s: the insert of bytes %d-%d failed (%s); its batches go "
                    "again one by one",
                    self.sink,
                    group.start,
                    group.end,
                    outcome,
                )
                offset = self._one_by_one(path, group.start, group.end, lock, tally)
                continue
            offset = _confirmed(
                lock,
                tally,
                file=path.name,
                span=(offset, group.end),
                payloads=group.payloads,
                result=outcome,
            )
        tally.advance(max(path.stat().st_size - offset, 0))  # blank lines after the last batch
        path.unlink()
        fsync_directory(self.directory)
        lock.heartbeat(file="", offset=0)
        tally.files_done += 1

    def _one_by_one(self, path: Path, start: int, end: int, lock: ReplayLock, tally: _Tally) -> int:
        """Bytes ``start``-``end`` of ``path`` again, a batch per insert through
        ``Delivery.append`` (retries, poison set aside); returns the offset reached."""
        offset = start
        for batch in read_batches(path, self.batch_records, start_offset=start):
            if batch.start_offset >= end:
                break
            result = self.delivery.append(prepare(self.sink, batch.payloads))
            offset = _confirmed(
                lock,
                tally,
                file=path.name,
                span=(offset, batch.end_offset),
                payloads=len(batch.payloads),
                result=result,
            )
        return offset


def _confirmed(
    lock: ReplayLock,
    tally: _Tally,
    *,
    file: str,
    span: tuple[int, int],
    payloads: int,
    result: DeliveryReport,
) -> int:
    """The bytes ``span`` of ``file`` (``payloads`` lines) are in ClickHouse or the dead
    letters: a replayer that takes over resumes at its end, which is returned."""
    offset, end = span
    lock.heartbeat(file=file, offset=end)
    tally.records += payloads
    tally.inserted += result.inserted
    tally.dead_lettered += result.dead_lettered
    tally.advance(end - offset)
    return end


class _Group:
    """The batches of one insert: up to ``size`` consecutive batches of a file, each decoded
    when the insert asks for it; where they start and end in the file and their payloads."""

    def __init__(
        self, sink: Sink, first: SpoolBatch, rest: Iterator[SpoolBatch], size: int
    ) -> None:
        self._sink = sink
        self._batches = chain([first], islice(rest, size - 1))
        self.start = self.end = first.start_offset
        self.payloads = 0

    def prepared(self) -> Iterator[PreparedBatch]:
        for batch in self._taken():
            yield prepare(self._sink, batch.payloads)

    def drain(self) -> None:
        """Take the batches the insert did not (undecoded), so that ``end`` is the group's own
        end."""
        for _ in self._taken():
            pass

    def _taken(self) -> Iterator[SpoolBatch]:
        for batch in self._batches:
            self.end = batch.end_offset
            self.payloads += len(batch.payloads)
            yield batch


def _groups(sink: Sink, batches: Iterator[SpoolBatch], size: int) -> Iterator[_Group]:
    """``batches`` in groups of ``size``, each taken whole before the next starts."""
    for first in batches:
        group = _Group(sink, first, batches, size)
        yield group
        group.drain()
