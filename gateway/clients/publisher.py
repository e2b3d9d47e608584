"""Records leave the gateway through here: a ``KEEP`` drain (``gateway.clients.drain``) of
encoded records into Redis streams.

Invariants:
- ``submit`` is synchronous and O(1): a request never awaits Redis and never fails because of it.
- The buffer holds at most ``buffer_records`` encoded records; when full, new records are
  dropped, counted in ``dropped`` and logged (the drain's invariants).
- One background task per worker drains the buffer oldest first, a batch per round trip: one
  ``EVALSHA`` of a tiny Lua script that XADDs each record (no MAXLEN: the ingester trims what it
  has acknowledged). Why not a pipeline of XADDs: redis-py packs and parses every command in
  Python, which cost ≈35 µs of the worker's CPU per XADD, five per request (profiled); one
  script call per batch costs the same once. Records leave the buffer only after Redis
  answered; on a Redis error they stay and the task retries on the ``shared.backoff``
  schedule (50 ms doubling up to ``retry_max_s``). A batch whose answer was lost may have
  been added, so a retry can duplicate it: delivery is at least once, and records carry their
  identity.
- With an outage spool (``gateway.clients.outage_spool``): once Redis has been unreachable for
  ``spool.grace_s``, the buffer is written to disk every ``spool.interval_s`` (fsynced, then
  let go), so a long outage neither fills memory nor loses records with the worker. When Redis
  answers again, the same task drains the spool back into the streams (a batch and its file
  offset in one script call: resumed exactly, never sent twice), spooled usage included.
- ``stop`` flushes what it can within ``flush_deadline_s`` (at once to the spool when Redis is
  down); what is left is logged and counted.
- Shards: a record goes to the shard of its routing key (the request id, ``shared.streams``).
  On a Redis Cluster a script may only touch keys of one slot, so a batch is split into one
  script call per slot, sent concurrently; the records of a call that failed go back to the
  front of the buffer and are retried, the others are done (a master down delays only its own
  shards' records). Spooled records are drained into shard 0 (the spool keeps no shard); on a
  cluster a drained batch and its file offset are two calls (the offset key is in another
  slot), so a drainer that dies between them sends that batch again: at least once there.
- Counters (``shared.metrics``): what ``stats`` shows is what ``/metrics`` exports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.clients.drain import Drain, Outlet, Policy, Undelivered
from gateway.clients.outage_spool import OFFSET_TTL_S, Deliver, OutageSpool
from gateway.metrics import RECORDS_BUFFERED, publisher_counters
from gateway.policy.outage import Outage
from gateway.settings import PublisherSettings
from shared.backoff import Backoff
from shared.metrics import counted
from shared.redis_client import is_cluster, slot_of
from shared.streams import RECORD_FIELD, Sink, shard_of, stream_key

__all__ = ["Publisher"]

log = logging.getLogger(__name__)

XADD_BATCH_LUA = """
local pairs_end = #ARGV - #ARGV % 2
for i = 1, pairs_end, 2 do
  redis.call('XADD', KEYS[tonumber(ARGV[i])], '*', ARGV_FIELD, ARGV[i + 1])
end
if #ARGV % 2 == 1 then
  redis.call('SET', KEYS[#KEYS], ARGV[#ARGV], 'EX', OFFSET_TTL)
end
return pairs_end / 2
"""
"""KEYS: the streams of the batch; ARGV: (index into KEYS, encoded record) pairs, in order.
When draining the spool, one more KEY and ARGV: the file's offset key and its new offset, set
in the same (atomic) call."""

_FIRST_RETRY_S = 0.05

_Entry = tuple[str, bytes]
"""A buffered record: its stream key (sink and shard) and its encoded bytes."""


class Publisher(Outlet[_Entry]):
    """The outlet of a ``KEEP`` drain of (stream key, encoded record) entries, and the
    keeper of the outage spool those entries go to while Redis is down."""

    published = counted("published")
    dropped = counted("dropped")
    failures = counted("failures")
    spooled = counted("spooled")
    unspooled = counted("unspooled")
    spool_failures = counted("spool_failures")

    expected_errors = (RedisError, OSError)

    def __init__(
        self,
        redis: Redis,
        settings: PublisherSettings,
        *,
        prefix: str = "floopy",
        spool: OutageSpool | None = None,
        shards: int = 1,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._shards = shards
        self._keys = {
            sink: [stream_key(sink, prefix, shard) for shard in range(shards)] for sink in Sink
        }
        self._sinks = {key: sink for sink, keys in self._keys.items() for key in keys}
        self._by_slot = is_cluster(redis)
        self._xadd_batch = redis.register_script(
            XADD_BATCH_LUA.replace("ARGV_FIELD", repr(RECORD_FIELD.decode())).replace(
                "OFFSET_TTL", str(OFFSET_TTL_S)
            )
        )
        self._spool = spool
        self._outage = Outage(spool.settings.grace_s if spool else 0.0)
        self.idle_check_s = spool.settings.check_interval_s if spool else None
        self.drains: dict[str, Deliver] = {
            sink.value: partial(self._deliver_spooled, sink) for sink in Sink
        }
        """Spool names this task drains and how; the usage recorder adds ``usage``."""
        self.counters = publisher_counters()
        self.last_error = ""
        self._drain: Drain[_Entry] = Drain(
            self,
            self.counters,
            name="publisher",
            policy=Policy.KEEP,
            capacity=settings.buffer_records,
            batch_items=settings.batch_records,
            linger_s=settings.linger_s,
            backoff=Backoff(_FIRST_RETRY_S, settings.retry_max_s),
            gauge=RECORDS_BUFFERED,
        )

    @property
    def buffered(self) -> int:
        return len(self._drain)

    def stats(self) -> dict[str, Any]:
        return {
            "buffered": self.buffered,
            "published": self.published,
            "dropped": self.dropped,
            "failures": self.failures,
            "last_error": self.last_error,
            "spool": None
            if self._spool is None
            else {
                "spooled": self.spooled,
                "drained": self.unspooled,
                "failures": self.spool_failures,
                "pending": self._spool.pending,
            },
        }

    def submit(self, sink: Sink, payload: bytes, routing_key: str = "") -> bool:
        """Queue one encoded record for the shard of ``routing_key`` (its request id); False
        (and counted) when the buffer is full."""
        return self._drain.submit((self._keys[sink][shard_of(routing_key, self._shards)], payload))

    def start(self) -> None:
        self._drain.start()

    async def stop(self) -> None:
        """Stop the drain task, then flush what Redis takes before the deadline (straight to
        the spool when Redis is down); what is left is lost, logged and counted."""
        await self._drain.stop(self._settings.flush_deadline_s)

    async def send(self, batch: list[_Entry]) -> Undelivered[_Entry] | None:
        """XADD a batch: one call per slot on a cluster, else one call."""
        groups = _by_slot(batch) if self._by_slot else [batch]
        if len(groups) == 1:
            await self._xadd_group(batch)
            self.counters.inc("published", len(batch))
            return None
        results = await asyncio.gather(
            *(self._xadd_group(group) for group in groups), return_exceptions=True
        )
        failed = [
            item
            for group, result in zip(groups, results, strict=True)
            if isinstance(result, BaseException)
            for item in group
        ]
        self.counters.inc("published", len(batch) - len(failed))
        error = next((r for r in results if isinstance(r, BaseException)), None)
        return None if error is None else Undelivered(failed, error)

    async def _xadd_group(self, group: list[_Entry]) -> None:
        keys: dict[str, int] = {}
        args: list[int | bytes] = []
        for key, payload in group:
            args.append(keys.setdefault(key, len(keys) + 1))
            args.append(payload)
        await self._xadd_batch(keys=list(keys), args=args)

    async def on_failure(self, failure: Undelivered[_Entry]) -> None:
        exc = failure.error
        self.counters.inc("failures")
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._outage.failed(time.monotonic())
        if self.failures == 1 or self.failures % 50 == 0:
            log.warning(
                "publishing to Redis failed (%d failures, %d buffered): %s",
                self.failures,
                self.buffered,
                self.last_error,
            )

    def recovered(self) -> None:
        self._outage.recovered()

    def has_backlog(self) -> bool:
        return self._spool is not None and self._spool.pending

    async def check_backlog(self) -> None:
        """An idle worker looks for files other workers left."""
        if self._spool is not None:
            self._spool.pending = await asyncio.to_thread(self._spool.has_files)

    async def send_backlog(self) -> None:
        if self._spool is not None and self._spool.pending:
            self.counters.inc("unspooled", await self._spool.drain(self._redis, self.drains))

    async def wait_out(self, delay_s: float, drain: Drain[_Entry]) -> None:
        """Wait ``delay_s`` before the next try; meanwhile, past the grace, move the buffer to
        disk every ``interval_s``."""
        end = time.monotonic() + delay_s
        while not drain.stopping:
            if self._spool is not None and self._outage.spooling(time.monotonic()):
                await self.spool_buffer()
            left = end - time.monotonic()
            if left <= 0:
                return
            step = self._spool.settings.interval_s if self._spool else left
            await asyncio.sleep(min(left, step))

    def hold_at_stop(self) -> bool:
        return self._spool is not None and self._outage.down

    async def left_at_stop(self, drain: Drain[_Entry]) -> None:
        if self._spool is not None:
            spooled = await self.spool_buffer()
            log.warning("shutdown: %d records spooled to disk for the next worker", spooled)
        if left := len(drain):
            log.error(
                "shutdown: %d records could not be published before the deadline and are lost",
                left,
            )
            self.counters.inc("dropped", left)

    async def spool_buffer(self) -> int:
        """Write what is buffered to the spool (fsynced) and let it go; a sink whose write
        failed keeps its records in the buffer. Returns the records spooled. A cancelled
        caller still waits for a write under way, so what reached disk always leaves memory."""
        if self._spool is None or not len(self._drain):
            return 0
        batch = self._drain.held()
        by_sink: dict[Sink, list[bytes]] = {}
        for key, payload in batch:
            by_sink.setdefault(self._sinks[key], []).append(payload)
        write = asyncio.ensure_future(asyncio.to_thread(self._append_all, by_sink))
        try:
            failed = await asyncio.shield(write)
        except asyncio.CancelledError:
            self._let_go(batch, await write)
            raise
        return self._let_go(batch, failed)

    def _append_all(self, by_sink: dict[Sink, list[bytes]]) -> set[Sink]:
        """Blocking: one fsynced append per sink; the sinks that failed."""
        assert self._spool is not None
        failed: set[Sink] = set()
        for sink, payloads in by_sink.items():
            try:
                self._spool.append(sink.value, payloads)
            except OSError as exc:
                failed.add(sink)
                self.counters.inc("spool_failures")
                log.error("could not spool %d %s records: %s", len(payloads), sink, exc)
        return failed

    def _let_go(self, batch: list[_Entry], failed: set[Sink]) -> int:
        kept = [entry for entry in batch if self._sinks[entry[0]] in failed]
        self._drain.release(len(batch), kept)
        self.counters.inc("spooled", len(batch) - len(kept))
        return len(batch) - len(kept)

    async def _deliver_spooled(
        self, sink: Sink, payloads: list[bytes], offset_key: str, end_offset: int
    ) -> None:
        args: list[int | bytes] = []
        for payload in payloads:
            args += (1, payload)
        stream = self._keys[sink][0]
        if self._by_slot:  # the offset key is in another slot: two calls (see the invariants)
            await self._xadd_batch(keys=[stream], args=args)
            await self._redis.set(offset_key, end_offset, ex=OFFSET_TTL_S)
            return
        args.append(end_offset)
        await self._xadd_batch(keys=[stream, offset_key], args=args)


def _by_slot(batch: list[_Entry]) -> list[list[_Entry]]:
    groups: dict[int, list[_Entry]] = {}
    for item in batch:
        groups.setdefault(slot_of(item[0]), []).append(item)
    return list(groups.values())
