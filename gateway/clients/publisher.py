"""Records leave the gateway through here: a bounded in-memory buffer drained to Redis streams.

Invariants:
- ``submit`` is synchronous and O(1): a request never awaits Redis and never fails because of it.
- The buffer holds at most ``buffer_records`` encoded records; when full, new records are
  dropped, counted in ``dropped`` and logged (at most one line per ``DROP_LOG_EVERY_S``).
- One background task per worker drains the buffer oldest first, a batch per round trip: one
  ``EVALSHA`` of a tiny Lua script that XADDs each record (no MAXLEN: the ingester trims what it
  has acknowledged). Why not a pipeline of XADDs: redis-py packs and parses every command in
  Python, which cost ≈35 µs of the worker's CPU per XADD, five per request (profiled); one
  script call per batch costs the same once. Records leave the buffer only after Redis
  answered; on a Redis error they stay and the task retries with exponential backoff up to
  ``retry_max_s``. A batch whose answer was lost may have been added, so a retry can duplicate
  it: delivery is at least once, and records carry their identity.
- ``stop`` flushes what it can within ``flush_deadline_s``; what is left is logged and counted.
- Shards: a record goes to the shard of its routing key (the request id, ``shared.streams``).
  On a Redis Cluster a script may only touch keys of one slot, so a batch is split into one
  script call per slot, sent concurrently; the records of a call that failed go back to the
  front of the buffer and are retried, the others are done (a master down delays only its own
  shards' records).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.metrics import RECORDS_BUFFERED, publisher_counters
from gateway.settings import PublisherSettings
from shared.metrics import counted
from shared.redis_client import is_cluster, slot_of
from shared.streams import RECORD_FIELD, Sink, shard_of, stream_key

__all__ = ["DROP_LOG_EVERY_S", "Publisher"]

log = logging.getLogger(__name__)

XADD_BATCH_LUA = """
for i = 1, #ARGV, 2 do
  redis.call('XADD', KEYS[tonumber(ARGV[i])], '*', ARGV_FIELD, ARGV[i + 1])
end
return #ARGV / 2
"""
"""KEYS: the streams of the batch; ARGV: (index into KEYS, encoded record) pairs, in order."""

DROP_LOG_EVERY_S = 10.0


class Publisher:
    published = counted("published")
    dropped = counted("dropped")
    failures = counted("failures")

    def __init__(
        self,
        redis: Redis,
        settings: PublisherSettings,
        *,
        prefix: str = "floopy",
        shards: int = 1,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._shards = shards
        self._keys = {
            sink: [stream_key(sink, prefix, shard) for shard in range(shards)] for sink in Sink
        }
        self._by_slot = is_cluster(redis)
        self._buffer: deque[tuple[str, bytes]] = deque()
        self._xadd_batch = redis.register_script(
            XADD_BATCH_LUA.replace("ARGV_FIELD", repr(RECORD_FIELD.decode()))
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_drop_log = 0.0
        self.counters = publisher_counters()
        """published, dropped, failures: shown at /health and exported at /metrics."""
        self.last_error = ""

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def stats(self) -> dict[str, Any]:
        return {
            "buffered": self.buffered,
            "published": self.published,
            "dropped": self.dropped,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    def submit(self, sink: Sink, payload: bytes, routing_key: str = "") -> bool:
        """Queue one encoded record for the shard of ``routing_key`` (its request id); False
        (and counted) when the buffer is full."""
        if len(self._buffer) >= self._settings.buffer_records:
            self.counters.inc("dropped")
            self._log_drop()
            return False
        self._buffer.append((self._keys[sink][shard_of(routing_key, self._shards)], payload))
        if not self._wake.is_set():
            self._wake.set()
        return True

    def _log_drop(self) -> None:
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_EVERY_S:
            self._last_drop_log = now
            log.error(
                "publish buffer full (%d records): dropping new records; %d dropped so far",
                self._settings.buffer_records,
                self.dropped,
            )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="floopy-publisher")

    async def _run(self) -> None:
        delay = 0.05
        while not self._stopping:
            RECORDS_BUFFERED.set(len(self._buffer))  # once per batch, not per record
            if not self._buffer:
                self._wake.clear()
                await self._wake.wait()
                if self._settings.linger_s:
                    await asyncio.sleep(self._settings.linger_s)
            try:
                await self.flush_batch()
                delay = 0.05
            # the drain task must outlive anything a client library throws: records wait
            except Exception as exc:
                if not isinstance(exc, RedisError | OSError):
                    log.exception("publishing failed unexpectedly; retrying")
                self._note_failure(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.retry_max_s)

    def _note_failure(self, exc: BaseException) -> None:
        self.counters.inc("failures")
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.failures == 1 or self.failures % 50 == 0:
            log.warning(
                "publishing to Redis failed (%d failures, %d buffered): %s",
                self.failures,
                self.buffered,
                self.last_error,
            )

    async def flush_batch(self) -> int:
        """XADD the oldest batch (one call per slot on a cluster, else one call); remove it from
        the buffer once Redis took it. Raises the first error after putting back what failed."""
        batch = list(itertools.islice(self._buffer, self._settings.batch_records))
        if not batch:
            return 0
        groups = _by_slot(batch) if self._by_slot else [batch]
        if len(groups) == 1:
            await self._xadd_group(batch)
            failed: list[tuple[str, bytes]] = []
            error: BaseException | None = None
        else:
            results = await asyncio.gather(
                *(self._xadd_group(group) for group in groups), return_exceptions=True
            )
            failed = [
                item
                for group, result in zip(groups, results, strict=True)
                if isinstance(result, BaseException)
                for item in group
            ]
            error = next((r for r in results if isinstance(r, BaseException)), None)
        for _ in batch:
            self._buffer.popleft()
        self._buffer.extendleft(reversed(failed))
        self.counters.inc("published", len(batch) - len(failed))
        if error is not None:
            raise error
        return len(batch)

    async def _xadd_group(self, group: list[tuple[str, bytes]]) -> None:
        keys: dict[str, int] = {}
        args: list[int | bytes] = []
        for key, payload in group:
            args.append(keys.setdefault(key, len(keys) + 1))
            args.append(payload)
        await self._xadd_batch(keys=list(keys), args=args)

    async def stop(self) -> None:
        """Stop the drain task, then flush what Redis takes before the deadline."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        deadline = time.monotonic() + self._settings.flush_deadline_s
        while self._buffer and time.monotonic() < deadline:
            try:
                async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                    await self.flush_batch()
            except (RedisError, OSError, TimeoutError) as exc:
                self._note_failure(exc)
                await asyncio.sleep(0.1)
        if self._buffer:
            log.error(
                "shutdown: %d records could not be published before the deadline and are lost",
                self.buffered,
            )
            self.counters.inc("dropped", self.buffered)
            self._buffer.clear()


def _by_slot(batch: list[tuple[str, bytes]]) -> list[list[tuple[str, bytes]]]:
    groups: dict[int, list[tuple[str, bytes]]] = {}
    for item in batch:
        groups.setdefault(slot_of(item[0]), []).append(item)
    return list(groups.values())
