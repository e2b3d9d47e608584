"""After the response: a key's tokens and cost go to its usage counters, and token- or cost-unit
rate-limit buckets are charged.

Invariants:
- Never on the request's path: ``submit`` only appends to a bounded in-memory queue; one
  background task per worker drains it, many requests per Redis round trip (a pipeline of
  ``HINCRBY``/``HINCRBYFLOAT``/``EXPIREAT``, plus one forced GCRA call for every charge).
- Usage that cannot be written (Redis down) is counted (``failed``) and, with an outage spool,
  appended to its ``usage`` file at once (fsynced); the publisher's drain replays it when Redis
  answers: the counter increments and the file offset in one MULTI/EXEC, so each spooled
  request is counted exactly once, in the day and month it happened. Without a spool it is
  lost (logged). Token and cost *charges* of rate-limit buckets are not replayed: a bucket's
  window is over by then; they are counted (``charges_failed``) and logged. What does not fit
  in the queue is counted (``dropped``). Until the replay, usage limits are enforced on the
  usage that reached Redis: they under-count during an outage, they never refuse wrongly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.clients.keystore import KeyStore
from gateway.clients.outage_spool import OFFSET_TTL_S, USAGE, OutageSpool
from gateway.clients.ratelimiter import Bucket, RateLimiter
from gateway.policy.limits import after_response_cost

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from shared.records import RequestRecord

__all__ = ["SpooledUsage", "UsageEntry", "UsageRecorder", "record_usage"]

log = logging.getLogger(__name__)

_BATCH = 500
_LINGER_S = 0.02
"""Usage may reach Redis this much later; usage limits are daily and monthly, so 20 ms of lag
costs nothing, and it turns one round trip per request into one per batch under load."""


@dataclass(frozen=True, slots=True)
class UsageEntry:
    key_id: str
    tokens: int
    cost_usd: float | None
    now_ms: int
    charges: tuple[Bucket, ...] = ()


class SpooledUsage(msgspec.Struct, frozen=True):
    """A usage entry as a line of the ``usage`` spool (charges are not kept: see above)."""

    key_id: str
    tokens: int
    cost_usd: float | None
    now_ms: int


_spooled_encoder = msgspec.json.Encoder()
_spooled_decoder = msgspec.json.Decoder(SpooledUsage)


class UsageRecorder:
    def __init__(
        self,
        redis: Redis,
        keystore: KeyStore,
        limiter: RateLimiter,
        capacity: int = 100_000,
        *,
        spool: OutageSpool | None = None,
    ) -> None:
        self._redis = redis
        self._keystore = keystore
        self._limiter = limiter
        self.spool = spool
        self._queue: deque[UsageEntry] = deque()
        self._capacity = capacity
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.failed = 0
        self.dropped = 0
        self.spooled = 0
        self.replayed = 0
        self.lost = 0
        self.charges_failed = 0

    def submit(self, entry: UsageEntry) -> None:
        if len(self._queue) >= self._capacity:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("usage queue full: %d usage entries dropped so far", self.dropped)
            return
        self._queue.append(entry)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-recorder")

    async def stop(self, deadline_s: float = 2.0) -> None:
        if self._task is None:
            return
        self._task.cancel()
        # bounded: shutdown must not hang on a task that does not take its cancellation (seen
        # under litestar's test client: the task stuck "cancelling" on its Event's waiter)
        done, _ = await asyncio.wait({self._task}, timeout=deadline_s)
        if not done:
            log.error("usage recorder did not stop within %.1f s; flushing without it", deadline_s)
        self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                while self._queue:
                    await self._flush()

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self._queue),
            "written": self.written,
            "failed": self.failed,
            "spooled": self.spooled,
            "replayed": self.replayed,
            "lost": self.lost,
            "charges_failed": self.charges_failed,
            "dropped": self.dropped,
        }

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(_LINGER_S)  # let more arrive: one round trip for many
            while self._queue:
                await self._flush()

    async def _flush(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(_BATCH, len(self._queue)))]
        try:
            await self._write(batch)
            self.written += len(batch)
        except (RedisError, OSError) as exc:
            self.failed += len(batch)
            await self._spool_failed(batch, exc)
        charges = [bucket for entry in batch for bucket in entry.charges]
        if charges:
            try:
                await self._limiter.acquire_many(charges)
            except (RedisError, OSError) as exc:
                self.charges_failed += len(charges)
                log.warning("could not charge %d rate-limit buckets: %s", len(charges), exc)

    async def _spool_failed(self, batch: list[UsageEntry], exc: BaseException) -> None:
        cause = f"{type(exc).__name__}: {exc}"
        if self.spool is not None:
            lines = [
                _spooled_encoder.encode(SpooledUsage(e.key_id, e.tokens, e.cost_usd, e.now_ms))
                for e in batch
            ]
            try:
                await asyncio.to_thread(self.spool.append, USAGE, lines)
                self.spooled += len(batch)
                if self.spooled == len(batch) or self.spooled % 1000 < len(batch):
                    log.warning("usage of %d requests spooled (%s)", self.spooled, cause)
                return
            except OSError as spool_exc:
                cause = f"{cause}; spool: {spool_exc}"
        self.lost += len(batch)
        log.error(
            "could not record usage of %d requests (%s); %d lost so far",
            len(batch),
            cause,
            self.lost,
        )

    async def _write(self, batch: list[UsageEntry]) -> None:
        last_used: dict[str, int] = {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry in batch:
                self._keystore.queue_usage(
                    pipe, entry.key_id, entry.tokens, entry.cost_usd, entry.now_ms
                )
                last_used[entry.key_id] = max(entry.now_ms, last_used.get(entry.key_id, 0))
            self._keystore.queue_last_used(pipe, last_used)
            await pipe.execute()

    async def replay(self, payloads: list[bytes], offset_key: str, end_offset: int) -> None:
        """Deliver spooled usage (the drain's ``Deliver``): every increment and the file's new
        offset in one MULTI/EXEC, so a batch counts once even if the drainer dies."""
        entries: list[SpooledUsage] = []
        for payload in payloads:
            try:
                entries.append(_spooled_decoder.decode(payload))
            except msgspec.DecodeError as exc:  # a line torn by a crash: nothing to count
                self.lost += 1
                log.error("unreadable usage line skipped (%s): %.80r", exc, payload)
        async with self._redis.pipeline(transaction=True) as pipe:
            for e in entries:
                self._keystore.queue_usage(pipe, e.key_id, e.tokens, e.cost_usd, e.now_ms)
            pipe.set(offset_key, end_offset, ex=OFFSET_TTL_S)
            await pipe.execute()
        self.replayed += len(entries)


def record_usage(ctx: RequestContext, record: RequestRecord, recorder: UsageRecorder) -> None:
    """Queue what a finished request spent (nothing for a refused one)."""
    if ctx.api_key is None or ctx.error is not None:
        return
    charges = tuple(
        Bucket(b.key, b.policy, cost, force=True)
        for b in ctx.after_response_charges
        if (cost := after_response_cost(b.policy, record.total_tokens, record.cost_usd)) > 0
    )
    if record.total_tokens or record.cost_usd or charges:
        recorder.submit(
            UsageEntry(
                ctx.api_key.key_id,
                record.total_tokens,
                record.cost_usd,
                record.created_at_ms,
                charges,
            )
        )
