"""The step between a stream (or a spool file) and an insert: a batch of payloads becomes a
``PreparedBatch`` — decoded records (``shared.codec.decode_record``), their columns
(``ingester.columns``), and dead letters for the payloads that do not decode.

Invariants:
- ``prepare`` is pure (no connection, no file), CPU only and safe in any thread, so the stream
  consumer prepares the next batch while the one before it waits on ClickHouse. (The replay
  calls it in its own thread: ``ingester.replay``'s invariants say why.)
- Every payload is accounted for: it becomes its rows (one record, or on the spans sink the
  spans of one request: ``shared.codec.decode_records``), or one dead letter.
- Once ``tune_gc_for_batches`` ran, a prepared batch's objects are frozen out of the cyclic
  garbage collector (they are freed by reference counting as usual), and the collector runs a
  full collection of everything at most every ``FULL_COLLECTION_EVERY_S``, so garbage cycles
  made elsewhere in the process wait at most that long: memory stays flat.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from ingester.columns import Columns, build_columns
from ingester.dead_letter import DeadLetter
from shared.codec import AnyRecord, decode_current, decode_records, encode_record
from shared.errors import RecordDecodeError
from shared.streams import Sink

__all__ = [
    "FULL_COLLECTION_EVERY_S",
    "PreparedBatch",
    "Rows",
    "prepare",
    "row_payload",
    "tune_gc_for_batches",
]

Rows = list[tuple[AnyRecord, bytes | None]]
"""Each record with the payload it came from, or None when that payload held several records
(a request's spans): a row set aside alone is then re-encoded (``row_payload``)."""


@dataclass(frozen=True)
class PreparedBatch:
    """A batch decoded and transposed, ready for one insert; undecodable payloads already
    turned into dead letters."""

    sink: Sink
    rows: Rows
    letters: list[DeadLetter]
    columns: Columns
    payloads: int


FULL_COLLECTION_EVERY_S = 30.0


class _BatchGC:
    """Keeps the cyclic collector off the batches' objects.

    A batch of 5,000 records is ~70,000 container objects (structs, dicts, lists, the column
    views), alive until its insert is confirmed and never in a reference cycle. The collector
    kept walking them: young collections during ``prepare`` (3.7 of ~9 us per record of it on
    3.5 KB records) and again in the older generations while the batch waited for its insert.
    So ``prepare`` pauses the collector and then freezes (``gc.freeze``, O(1)) what is alive,
    the batch included; a full collection with everything unfrozen runs at most every
    ``FULL_COLLECTION_EVERY_S``, between batches, for the garbage cycles the rest of the
    process makes. Thread-safe: concurrent ``prepare`` calls are counted."""

    def __init__(self) -> None:
        self.enabled = False
        self._lock = threading.Lock()
        self._active = 0
        self._resume = False
        self._last_full = time.monotonic()

    @contextmanager
    def batch(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with self._lock:
            if self._active == 0:
                self._collect_if_due()
                self._resume = gc.isenabled()
                gc.disable()
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                gc.freeze()
                if self._active == 0 and self._resume:
                    gc.enable()

    def _collect_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_full >= FULL_COLLECTION_EVERY_S:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self._last_full = now


_batch_gc = _BatchGC()


def tune_gc_for_batches(*, freeze_batches: bool = True) -> None:
    """Tune the cyclic garbage collector for batch work; call once per process, at start.

    ``gc.freeze`` moves what start-up loaded out of every later collection; young collections
    run every 50,000 allocations instead of Python's 700 (with the default the collector ran
    hundreds of times per batch: 20 -> 13 us per record of ``prepare`` on 3 KB records); and
    ``prepare`` keeps the collector off each batch's objects (``_BatchGC``; ``freeze_batches``
    is off only to measure what that saves: ``bench.ingest --gc-walks-batches``)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    _batch_gc.enabled = freeze_batches


def prepare(sink: Sink, payloads: Sequence[bytes]) -> PreparedBatch:
    """Decode and build columns (pure, CPU only; safe in any thread)."""
    with _batch_gc.batch():
        rows, letters = _decode(sink, payloads)
        columns = build_columns(sink, [record for record, _ in rows]) if rows else []
    return PreparedBatch(sink, rows, letters, columns, len(payloads))


def row_payload(row: tuple[AnyRecord, bytes | None]) -> bytes:
    """The bytes a row is set aside (dead-lettered) with: its own record, decodable alone."""
    record, payload = row
    return payload if payload is not None else encode_record(record)


def _decode(sink: Sink, payloads: Sequence[bytes]) -> tuple[Rows, list[DeadLetter]]:
    current = decode_current(sink, payloads)
    if current is not None:
        return list(zip(current, payloads, strict=True)), []
    rows: Rows = []
    letters: list[DeadLetter] = []
    for payload in payloads:
        try:
            records = decode_records(sink, payload)
        except RecordDecodeError as exc:
            letters.append(DeadLetter(bytes(payload), f"RecordDecodeError: {exc}"))
            continue
        if len(records) == 1:
            rows.append((records[0], payload))
        else:
            rows.extend((record, None) for record in records)
    return rows, letters
