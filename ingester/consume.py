"""The stream consumer: one asyncio task per sink and stream shard moves entries from that
Redis stream into ClickHouse through ``Delivery``, in batches flushed on size or age. Claiming,
trimming and forgetting consumers are per stream, so each shard is handled on its own.

Invariants:
- An entry is acknowledged only after ClickHouse confirmed its insert, after it was set aside
  as poison (dead-letter file fsynced), or after its payload was appended to the sink's spool
  and fsynced. If even the spool write fails the entries stay pending and are claimed later
  (by this consumer or another) once idle longer than ``claim_min_idle_s``.
- A live consumer holds an entry at most ``IngesterSettings.max_hold_s``, which the settings
  keep well below ``claim_min_idle_s``: live consumers' batches are never claimed.
- Claiming, forgetting consumers and trimming are ``ingester.housekeeping``'s, run between
  reads when due; entries it claims are processed like new ones.
- On start, and again after any Redis error or failed spool write, the consumer first settles
  what it holds (flush, wait for the batch in flight, ack what is confirmed) and then re-reads
  its own pending entries: a read whose reply was lost with the connection, or a batch the
  spool refused, is retried as soon as Redis answers, not after ``claim_min_idle_s``. On stop
  it finishes and acks (or spools) the batch in hand, then returns.
- A batch ClickHouse confirmed (or the spool holds) whose XACK failed is kept as ids only and
  acked again, before anything else, once Redis answers: it is never inserted again, and an
  old ack error never surfaces in (and abandons) a later batch.
- Blocking work (ClickHouse, fsync) runs in threads. An insert is sent, answered, then acked
  while the next batches are read, so ClickHouse's write overlaps our read and decode. Under a
  backlog (batches flushed full) an insert stays open and takes each next batch as it is
  flushed, up to ``insert_records`` records or ``batch_age_s``: ClickHouse writes them as one
  part, which costs it less than half the CPU per record of a part per batch. A batch flushed
  by age closes it, so a quiet stream waits no longer. With two ``Delivery`` objects (two
  connections) the next insert is sent while the server still writes the last one's part; at
  most one insert per ``Delivery`` is in flight, and each ``Delivery`` is used from one thread
  at a time. An insert's entries are acked once it is confirmed, which may be before the
  insert sent ahead of it. An insert that fails goes again a batch at a time, as a batch
  alone always went.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ingester.dead_letter import DeadLetter, DeadLetterFile
from ingester.decode import PreparedBatch, prepare
from ingester.delivery import Delivery, DeliveryReport
from ingester.housekeeping import Entry, Housekeeping
from ingester.metrics import INSERT_SECONDS, Counters
from ingester.metrics import ConsumerCounter as C
from ingester.settings import IngesterSettings
from ingester.sinks import BatchSink
from ingester.stream_policy import Batch, FlushPolicy
from shared.errors import PipelineError, SinkUnavailableError
from shared.metrics import observe
from shared.streams import CONSUMER_GROUP, RECORD_FIELD, Sink, stream_key

__all__ = ["StreamConsumer", "ensure_group"]

log = logging.getLogger(__name__)

_A = TypeVar("_A")
_R = TypeVar("_R")


async def ensure_group(redis: Redis, key: str) -> None:
    """Create the consumer group (and the stream) at id 0 unless it exists: entries published
    before any ingester ran are consumed too."""
    try:
        await redis.xgroup_create(key, CONSUMER_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class StreamConsumer:
    def __init__(
        self,
        redis: Redis,
        sink: Sink,
        *,
        deliveries: Sequence[Delivery],
        spool: BatchSink[Sequence[bytes], None],
        settings: IngesterSettings,
        counters: Counters,
        clock: Callable[[], float] = time.monotonic,
        shard: int = 0,
    ) -> None:
        self.sink = sink
        self.shard = shard
        self.key = stream_key(sink, settings.redis.key_prefix, shard)
        self.name = settings.consumer_name
        self._redis = redis
        if not deliveries:
            raise ValueError("a consumer needs at least one Delivery")
        self._deliveries = tuple(deliveries)
        self._turn = 0
        self._spool = spool
        self._settings = settings
        self._counters = counters
        self._clock = clock
        self._policy = FlushPolicy(settings.batch_records, settings.batch_age_s)
        self._batch = Batch()
        self._chores = Housekeeping(
            redis, sink, self.key, name=self.name, settings=settings, counters=counters
        )
        self._dead_letters: BatchSink[Sequence[DeadLetter], None] = DeadLetterFile(
            settings.dead_letter_dir, sink
        )
        self._stopping = asyncio.Event()
        self._in_flight: deque[asyncio.Task[None]] = deque()
        """Inserts being sent or answered, oldest first: at most one per Delivery."""
        self._insert_threads = ThreadPoolExecutor(
            max_workers=len(self._deliveries) + 1, thread_name_prefix=f"insert-{sink}-{shard}"
        )
        """An open insert's sender waits for batches for up to ``batch_age_s``: in asyncio's
        shared pool, a few consumers' senders would leave no thread to prepare a batch. One
        sender per Delivery, and one thread to hand a sender its next batch."""
        self._open: _Insert | None = None
        """The insert that takes the next batch flushed full, if it is still open."""
        self._unacked: list[bytes] = []
        """Ids of confirmed batches whose XACK failed (Redis down); acked first when it is back."""
        self._reread_own = True
        """Settle and re-read this consumer's own pending entries before reading new ones."""

    def stop(self) -> None:
        """Stop reading; ``run`` returns after the batch in hand is flushed."""
        self._stopping.set()

    async def run(self) -> None:
        log.info("consumer %s starting on %s", self.name, self.key)
        while not self._stopping.is_set():
            try:
                if self._reread_own:
                    await ensure_group(self._redis, self.key)
                    await self._settle_all()
                    self._reread_own = False
                    await self._resume_own_pending()
                else:
                    await self._step()
            except RedisError as exc:
                self._reread_own = True
                await self._on_error("redis", exc)
            # the task must outlive one bad batch; that batch's entries stay pending
            except Exception as exc:
                log.exception("consumer %s on %s failed", self.name, self.key)
                await self._on_error("unexpected", exc)
        await self._finish()
        self._insert_threads.shutdown(wait=False, cancel_futures=True)
        log.info("consumer %s stopped on %s: %s", self.name, self.key, self.counters())

    def counters(self) -> dict[str, int]:
        return self._counters.snapshot(self.sink)

    async def _finish(self) -> None:
        try:
            await self._settle_all()
        except RedisError as exc:
            self._counters.inc(self.sink, C.ERRORS)
            log.warning("final flush on %s left entries pending: %s", self.key, exc)

    async def _on_error(self, kind: str, exc: BaseException) -> None:
        self._counters.inc(self.sink, C.ERRORS)
        log.warning("consumer %s on %s: %s error, backing off: %s", self.name, self.key, kind, exc)
        if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
            with contextlib.suppress(RedisError):
                await ensure_group(self._redis, self.key)
        if kind != "redis":
            self._batch.clear()  # a batch that broke something stays pending, claimed later
        await self._sleep(self._settings.error_backoff_s)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _step(self) -> None:
        now = self._clock()
        if self._open is not None and now - self._open.opened_at >= self._policy.max_age_s:
            await self._close_insert()
        if self._chores.claims.due(now):
            self._chores.claims.mark(now)
            await self._reclaim()
            await self._chores.forget_idle_consumers()
        if self._chores.trims.due(now):
            self._chores.trims.mark(now)
            await self._chores.trim()
        if self._policy.due(self._batch, self._clock()):
            await self._flush()
            return
        block = self._policy.read_block_ms(self._batch, self._clock(), self._settings.read_block_ms)
        count = self._policy.read_count(self._batch)
        response = await self._redis.xreadgroup(
            CONSUMER_GROUP, self.name, {self.key: ">"}, count=count, block=block
        )
        await self._take(_entries(response))
        if self._policy.due(self._batch, self._clock()):
            await self._flush()

    async def _resume_own_pending(self) -> None:
        """Entries delivered to this consumer name before a restart and never acked."""
        last: bytes = b"0"
        while not self._stopping.is_set():
            response = await self._redis.xreadgroup(
                CONSUMER_GROUP, self.name, {self.key: last}, count=self._settings.batch_records
            )
            entries = _entries(response)
            if not entries:
                return
            last = entries[-1][0]
            log.info("consumer %s resumes %d own pending entries", self.name, len(entries))
            await self._take(entries)
            if self._policy.due(self._batch, self._clock()):
                await self._flush()

    async def _take(self, entries: Sequence[Entry]) -> None:
        poison: list[tuple[bytes, dict[bytes, bytes] | None]] = []
        now = self._clock()
        for entry_id, fields in entries:
            payload = fields.get(RECORD_FIELD) if fields else None
            if payload is None:
                poison.append((entry_id, fields))
            else:
                self._batch.add(entry_id, payload, now)
        self._counters.inc(self.sink, C.READ, len(entries))
        if poison:
            await self._set_aside(poison)

    async def _set_aside(self, poison: Sequence[tuple[bytes, dict[bytes, bytes] | None]]) -> None:
        """Entries without a record field can never be inserted: dead-letter, then ack."""
        letters = [
            DeadLetter(
                repr(fields).encode(), f"stream entry {entry_id!r} has no field {RECORD_FIELD!r}"
            )
            for entry_id, fields in poison
        ]
        await asyncio.to_thread(self._dead_letters.append, letters)
        self._counters.inc(self.sink, C.DEAD_LETTERED, len(letters))
        log.warning("dead-lettered %d entries without a record on %s", len(letters), self.key)
        await self._ack([entry_id for entry_id, _ in poison])

    async def _settle(self) -> None:
        """Close the open insert and wait for every insert in flight. ``_acked`` keeps a failed
        XACK's ids for later, so only a bug of ours surfaces here, in the consumer's loop."""
        await self._close_insert()
        while self._in_flight:
            await self._in_flight.popleft()

    async def _settle_all(self) -> None:
        """Flush the batch in hand, wait for it, and ack every confirmed batch still unacked.
        Raises ``RedisError`` while Redis is down; nothing is lost or inserted twice then."""
        await self._flush()
        await self._settle()
        if self._unacked:
            ids = self._unacked
            await self._ack(ids)
            self._unacked = []
            log.info(
                "consumer %s acked %d confirmed entries after redis returned", self.name, len(ids)
            )

    async def _flush(self) -> None:
        if not self._batch.ids:
            return
        ids, payloads = list(self._batch.ids), list(self._batch.payloads)
        full = len(ids) >= self._policy.max_records  # more is waiting: keep the insert open
        # decoded while the insert in flight sends or waits on ClickHouse (see ingester.decode)
        prepared = await asyncio.to_thread(prepare, self.sink, payloads)
        if self._open is None:
            while len(self._in_flight) >= len(self._deliveries):  # a Delivery for the next
                await self._in_flight.popleft()
        self._batch.clear()  # only now: an error above leaves the batch in hand, not abandoned
        insert = self._open or self._start_insert()
        insert.batches.append((ids, payloads))
        insert.records += len(ids)
        await self._in_insert_thread(insert.blocks.put, prepared)  # once the last is taken
        aged = self._clock() - insert.opened_at >= self._policy.max_age_s
        if not full or aged or insert.records >= self._settings.insert_records:
            await self._close_insert()

    def _start_insert(self) -> _Insert:
        delivery = self._deliveries[self._turn % len(self._deliveries)]
        self._turn += 1
        insert = _Insert(delivery, queue.Queue(maxsize=1), self._clock())
        self._open = insert
        self._in_flight.append(asyncio.create_task(self._deliver_insert(insert)))
        return insert

    async def _close_insert(self) -> None:
        insert, self._open = self._open, None
        if insert is not None:
            await self._in_insert_thread(insert.blocks.put, None)

    async def _deliver_insert(self, insert: _Insert) -> None:
        """One INSERT of the batches flushed into ``insert`` until it closed, then the acks. If
        ClickHouse was unavailable its batches go to the spool; if it refused poison, they go
        again one by one as a batch alone goes (retries, poison set aside, the spool once
        ClickHouse is unavailable)."""
        started = time.perf_counter()
        outcome = await self._in_insert_thread(self._send, insert)
        observe(INSERT_SECONDS.labels(self.sink.value), time.perf_counter() - started)
        if isinstance(outcome, DeliveryReport):
            self._count(outcome)
            await self._acked(insert.ids())
            return
        log.warning(
            "insert of %d batches (%d records) on %s failed, sent again one by one: %s",
            len(insert.batches),
            insert.records,
            self.key,
            outcome,
        )
        # unavailable: to the spool without retries (they would add to the entries' hold);
        # poison: each batch alone, with retries and bisection, until one finds it unavailable
        cause = outcome if isinstance(outcome, SinkUnavailableError) else None
        for ids, payloads in insert.batches:
            if cause is None:
                prepared = await asyncio.to_thread(prepare, self.sink, payloads)
                cause = await self._deliver(insert.delivery, ids, payloads, prepared)
            else:
                await self._spool_or_keep(ids, payloads, cause)

    async def _in_insert_thread(self, fn: Callable[[_A], _R], arg: _A) -> _R:
        return await asyncio.get_running_loop().run_in_executor(self._insert_threads, fn, arg)

    def _send(self, insert: _Insert) -> DeliveryReport | PipelineError:
        """The batches put into the insert until None, as one INSERT (in a thread)."""
        taken: Iterator[PreparedBatch] = iter(insert.blocks.get, None)
        (outcome,) = insert.delivery.append_groups(self.sink, [taken])
        for _ in taken:  # a failed insert stops taking: take the rest, so no put ever waits
            pass
        return outcome

    async def _deliver(
        self, delivery: Delivery, ids: list[bytes], payloads: list[bytes], prepared: PreparedBatch
    ) -> SinkUnavailableError | None:
        """One batch alone; the error when ClickHouse was unavailable (then it was spooled,
        or left pending if even the spool failed)."""
        started = time.perf_counter()
        try:
            report = await asyncio.to_thread(delivery.append, prepared)
        except SinkUnavailableError as exc:
            observe(INSERT_SECONDS.labels(self.sink.value), time.perf_counter() - started)
            await self._spool_or_keep(ids, payloads, exc)
            return exc
        observe(INSERT_SECONDS.labels(self.sink.value), time.perf_counter() - started)
        self._count(report)
        await self._acked(ids)
        return None

    def _count(self, report: DeliveryReport) -> None:
        self._counters.inc(self.sink, C.INSERTED, report.inserted)
        self._counters.inc(self.sink, C.DEAD_LETTERED, report.dead_lettered)
        log.debug(
            "insert on %s: %d inserted, %d dead", self.key, report.inserted, report.dead_lettered
        )

    async def _spool_or_keep(
        self, ids: list[bytes], payloads: list[bytes], cause: Exception
    ) -> None:
        if await self._spool_batch(payloads, cause):
            await self._acked(ids)
        else:
            self._reread_own = True  # retried from our pending entries after the backoff

    async def _acked(self, ids: list[bytes]) -> None:
        """Ack entries that are durable; if the XACK fails, keep their ids for later."""
        try:
            await self._ack(ids)
        except RedisError as exc:
            self._unacked.extend(ids)
            self._reread_own = True
            self._counters.inc(self.sink, C.ERRORS)
            log.warning(
                "consumer %s: %d entries of %s are durable but their XACK failed (%s); "
                "acking them once redis answers",
                self.name,
                len(ids),
                self.key,
                exc,
            )

    async def _spool_batch(self, payloads: Sequence[bytes], cause: Exception) -> bool:
        """True when the payloads are durable in the spool (so their entries may be acked)."""
        try:
            await asyncio.to_thread(self._spool.append, payloads)
        except OSError as exc:
            self._counters.inc(self.sink, C.SPOOL_FAILURES)
            log.error(
                "spool write failed on %s, leaving %d entries pending: %s (clickhouse: %s)",
                self.sink,
                len(payloads),
                exc,
                cause,
            )
            await self._sleep(self._settings.error_backoff_s)
            return False
        self._counters.inc(self.sink, C.SPOOLED, len(payloads))
        log.warning(
            "clickhouse unavailable, spooled %d payloads of %s: %s", len(payloads), self.sink, cause
        )
        return True

    async def _ack(self, ids: Sequence[bytes]) -> None:
        if not ids:
            return
        acked = await self._redis.xack(self.key, CONSUMER_GROUP, *ids)
        self._counters.inc(self.sink, C.ACKED, int(acked))

    async def _reclaim(self) -> None:
        """Process entries a dead consumer left pending (``Housekeeping.claim_idle``) like new
        ones."""
        if self._stopping.is_set():
            return
        async with contextlib.aclosing(self._chores.claim_idle()) as chunks:
            async for entries in chunks:
                await self._take(entries)
                if self._policy.due(self._batch, self._clock()):
                    await self._flush()
                if self._stopping.is_set():
                    return


def _entries(response: Any) -> list[Entry]:
    """The entries of a one-stream XREADGROUP reply (``None`` or ``[[key, entries]]``)."""
    if not response:
        return []
    return list(response[0][1])


@dataclass
class _Insert:
    """An INSERT open to the batches flushed full (a backlog): each is sent as it comes and
    ClickHouse writes them all as one part, as for a replay (``Delivery.append_groups``). It
    closes at ``insert_records``, at ``batch_age_s``, or with the first batch not full, so a
    quiet stream's records wait no longer than before."""

    delivery: Delivery
    """Its own, used by no other insert until this one settled."""
    blocks: queue.Queue[PreparedBatch | None]
    opened_at: float
    batches: list[tuple[list[bytes], list[bytes]]] = field(default_factory=list)
    """Each batch's entry ids and payloads, for the acks and, if the insert fails, to send
    again one by one (or spool)."""
    records: int = 0

    def ids(self) -> list[bytes]:
        return [entry_id for ids, _ in self.batches for entry_id in ids]
