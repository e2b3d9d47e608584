"""Delivery of one prepared batch (``ingester.decode``) to its ClickHouse table: insert with
retries, set poison aside.

Invariants:
- Blocking, and not thread-safe: one ``Delivery`` (one ClickHouse connection) per owner,
  called from one thread at a time (``asyncio.to_thread``).
- ``deliver`` either returns a report in which every payload is accounted for (its rows
  inserted or dead-lettered: ``inserted + dead_lettered == len(payloads)`` where each payload
  holds one record; a spans payload holds a request's spans, one row each), or raises
  ``SinkUnavailableError`` and then nothing may be assumed inserted: the caller spools or keeps
  the whole batch. Re-inserting is safe because the tables deduplicate by record identity
  (read with FINAL).
- Dead letters are written (fsynced) only when ``deliver`` returns, so a batch that is spooled
  and replayed later is not dead-lettered twice.
- Only ``SinkUnavailableError`` is retried. A rejected batch is never retried as a whole: the
  rows whose numbers do not fit are found exactly (``ingester.columns.invalid_rows``), the rest
  is bisected, and rows that fail alone are dead-lettered. Bisection of n rows with k bad ones
  costs O(k log n) inserts and at most 2n - 1, so it always ends and never blocks good rows.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from ingester.columns import Columns, build_columns, invalid_rows
from ingester.dead_letter import DeadLetter, DeadLetterFile
from ingester.decode import PreparedBatch, Rows, prepare, row_payload
from ingester.metrics import delivery_counters
from ingester.sink import ClickHouseSink
from shared.backoff import Backoff
from shared.errors import PipelineError, PoisonBatchError, SinkUnavailableError
from shared.settings import ClickHouseSettings
from shared.streams import Sink

__all__ = ["Delivery", "DeliveryReport"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryReport:
    inserted: int  # rows ClickHouse confirmed
    dead_lettered: int  # payloads (or rows) set aside as poison: undecodable, or rejected


class Delivery:
    """Decode payloads (shared.codec.decode_record), insert them into the sink's table with
    tenacity retries, set poison aside in the dead-letter file (with the error), and report.
    Blocking; call from a thread."""

    def __init__(
        self,
        clickhouse: ClickHouseSettings,
        dead_letter_dir: Path,
        *,
        attempts: int = 3,
        backoff_s: float = 0.2,
    ) -> None:
        self._sink = ClickHouseSink(clickhouse)
        self._dead_letter_dir = dead_letter_dir
        self._dead_letters = {s: DeadLetterFile(dead_letter_dir, s) for s in Sink}
        self.counters = delivery_counters()
        """Totals since the Delivery was made: inserted, dead_lettered, retries, unavailable,
        bisections, split_inserts (a group of ``append_groups`` failed, to be sent again a
        batch at a time; ``ingester.metrics``)."""
        self._retrying = Retrying(
            stop=stop_after_attempt(max(1, attempts)),
            wait=Backoff(backoff_s, max(backoff_s, 0.0) * 16).wait(),
            retry=retry_if_exception_type(SinkUnavailableError),
            before_sleep=self._on_retry,
            reraise=True,
        )

    def deliver(self, sink: Sink, payloads: Sequence[bytes]) -> DeliveryReport:
        """Raises shared.errors.SinkUnavailableError when ClickHouse cannot be reached after the
        retries; then nothing may be assumed inserted (the caller spools or keeps the whole
        batch; re-inserting is safe because tables deduplicate by record identity)."""
        return self.append(prepare(sink, payloads))

    def append(self, batch: PreparedBatch) -> DeliveryReport:
        """``deliver`` for a batch ``prepare`` already decoded (same contract): the
        ``ingester.sinks.BatchSink`` shape, as the spool and the dead letters."""
        sink, letters = batch.sink, list(batch.letters)
        try:
            inserted = self._insert_all(batch, letters)
        except SinkUnavailableError:
            self.counters.inc("unavailable")
            log.error("clickhouse unavailable sink=%s batch=%d", sink, batch.payloads)
            raise
        return self._settled(sink, inserted, letters)

    def append_groups(
        self, sink: Sink, groups: Iterable[Iterable[PreparedBatch]]
    ) -> Iterator[DeliveryReport | PipelineError]:
        """Each group of prepared batches of ``sink`` as one INSERT, each batch sent as its
        group yields it, so the caller holds one batch at a time while ClickHouse writes a
        group as one part (``ClickHouseSink.insert_groups``): the replay of a spool in small
        batches. Yields, in order, each group's report or the error it failed with.

        No retry and no bisection: after a ``SinkUnavailableError`` or ``PoisonBatchError``
        nothing of that group may be assumed inserted nor dead-lettered; the caller sends its
        batches again through ``append``, one by one, which retries and sets poison aside."""
        letters_of: deque[list[DeadLetter]] = deque()

        def columns_of(group: Iterable[PreparedBatch]) -> Iterator[Columns]:
            letters: list[DeadLetter] = []
            letters_of.append(letters)
            return _columns(group, letters)

        for outcome in self._sink.insert_groups(sink, map(columns_of, groups)):
            letters = letters_of.popleft()
            if isinstance(outcome, PipelineError):
                self.counters.inc("split_inserts")
                yield outcome
            else:
                yield self._settled(sink, outcome, letters)

    def ping(self) -> bool:
        """ClickHouse answers SELECT 1 now."""
        return self._sink.ping()

    def close(self) -> None:
        self._sink.close()

    def _settled(self, sink: Sink, inserted: int, letters: list[DeadLetter]) -> DeliveryReport:
        """The rows are in: the dead letters are written, and only then is it reported."""
        self._dead_letters[sink].append(letters)
        self.counters.inc("inserted", inserted)
        self.counters.inc("dead_lettered", len(letters))
        log.info("delivered sink=%s inserted=%d dead_lettered=%d", sink, inserted, len(letters))
        return DeliveryReport(inserted=inserted, dead_lettered=len(letters))

    def _insert_all(self, batch: PreparedBatch, letters: list[DeadLetter]) -> int:
        sink, rows = batch.sink, batch.rows
        if not rows:
            return 0
        try:
            inserted: int = self._retrying(self._sink.insert, sink, batch.columns)
            return inserted
        except PoisonBatchError as exc:
            log.warning("poison in batch sink=%s rows=%d: %s", sink, len(rows), exc)
        bad = invalid_rows(sink, [record for record, _ in rows])
        letters.extend(
            DeadLetter(row_payload(rows[i]), reason) for i, reason in sorted(bad.items())
        )
        good = [row for i, row in enumerate(rows) if i not in bad]
        return self._bisect(sink, good, letters) if good else 0

    def _bisect(self, sink: Sink, rows: Rows, letters: list[DeadLetter]) -> int:
        try:
            return self._insert(sink, rows)
        except PoisonBatchError as exc:
            if len(rows) == 1:
                letters.append(DeadLetter(row_payload(rows[0]), str(exc)))
                return 0
        self.counters.inc("bisections")
        mid = len(rows) // 2
        return self._bisect(sink, rows[:mid], letters) + self._bisect(sink, rows[mid:], letters)

    def _insert(self, sink: Sink, rows: Rows) -> int:
        columns = build_columns(sink, [record for record, _ in rows])
        inserted: int = self._retrying(self._sink.insert, sink, columns)
        return inserted

    def _on_retry(self, state: RetryCallState) -> None:
        self.counters.inc("retries")
        exc: Any = state.outcome.exception() if state.outcome else None
        log.warning("clickhouse insert retry %d: %s", state.attempt_number, exc)


def _columns(batches: Iterable[PreparedBatch], letters: list[DeadLetter]) -> Iterator[Columns]:
    """Each batch's columns, its dead letters into ``letters`` as it goes."""
    for batch in batches:
        letters.extend(batch.letters)
        yield batch.columns
