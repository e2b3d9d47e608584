"""After the response: a key's tokens and cost go to its usage counters, and token- or cost-unit
rate-limit buckets are charged.

Invariants:
- Never on the request's path: ``submit`` only appends to a bounded in-memory queue, a ``DROP``
  drain (``gateway.clients.drain``); one background task per worker drains it, many requests
  per Redis round trip (a pipeline of
  ``HINCRBY``/``HINCRBYFLOAT``/``EXPIREAT``, plus one forced GCRA call for every charge).
- Usage that cannot be written (Redis down) is counted (``failed``) and, with an outage spool,
  appended to its ``usage`` file at once (fsynced); the publisher's drain replays it when Redis
  answers: the counter increments and the file offset in one MULTI/EXEC, so each spooled
  request is counted exactly once, in the day and month it happened. Without a spool it is
  lost (logged). Token and cost *charges* of rate-limit buckets are not replayed: a bucket's
  window is over by then; they are counted (``charges_failed``) and logged. What does not fit
  in the queue is counted (``dropped``); what is still queued when ``stop``'s deadline passes
  is spooled or counted lost like a failed batch. Until the replay, usage limits are enforced on the
  usage that reached Redis: they under-count during an outage, they never refuse wrongly.
- Redis Cluster: usage keys carry the org's hash tag, so entries (and spooled lines) keep the
  org; charges go in one limiter call per org (a script's keys share one slot). A replayed batch
  and its file offset cannot be one MULTI there (other slots): a drainer that dies between the
  increments and the offset counts that batch twice.
- Counters (``shared.metrics``): what ``stats`` shows is what ``/metrics`` exports.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.clients.drain import Drain, Outlet, Policy, Undelivered
from gateway.clients.outage_spool import OFFSET_TTL_S, USAGE, OutageSpool
from gateway.clients.ratelimiter import RateLimiter
from gateway.clients.usage_counters import UsageCounters
from gateway.domain import Bucket
from gateway.metrics import access_counters
from gateway.policy.limits import after_response_cost
from shared.metrics import counted

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from shared.records import RequestRecord

__all__ = ["SpooledUsage", "UsageEntry", "UsageRecorder", "merge_usage", "record_usage"]

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
    org_id: str = ""
    """Needed on a Redis Cluster (the usage keys carry the org's hash tag)."""


def merge_usage(batch: list[UsageEntry]) -> list[UsageEntry]:
    """The batch's spend added up per key and UTC day, charges left out (they are charged
    apart): the counters end up the same, and a batch of one busy key costs one set of
    increments instead of one per request (redis-py packs every command in Python, ≈15 µs of
    the worker's CPU each, six per request before)."""
    merged: dict[tuple[str, str, int], UsageEntry] = {}
    for entry in batch:
        group = (entry.key_id, entry.org_id, entry.now_ms // 86_400_000)
        seen = merged.get(group)
        if seen is None:
            merged[group] = UsageEntry(
                entry.key_id, entry.tokens, entry.cost_usd, entry.now_ms, org_id=entry.org_id
            )
            continue
        cost = seen.cost_usd
        if entry.cost_usd is not None:
            cost = entry.cost_usd if cost is None else cost + entry.cost_usd
        merged[group] = UsageEntry(
            entry.key_id,
            seen.tokens + entry.tokens,
            cost,
            max(seen.now_ms, entry.now_ms),
            org_id=entry.org_id,
        )
    return list(merged.values())


class SpooledUsage(msgspec.Struct, frozen=True):
    """A usage entry as a line of the ``usage`` spool (charges are not kept: see above)."""

    key_id: str
    tokens: int
    cost_usd: float | None
    now_ms: int
    org_id: str = ""


_spooled_encoder = msgspec.json.Encoder()
_spooled_decoder = msgspec.json.Decoder(SpooledUsage)


class UsageRecorder(Outlet[UsageEntry]):
    """The outlet of a ``DROP`` drain of usage entries: a batch that Redis refused is spooled
    (or counted lost), never retried from memory."""

    written = counted("written")
    failed = counted("failed")
    dropped = counted("dropped")
    spooled = counted("spooled")
    replayed = counted("replayed")
    lost = counted("lost")
    charges_failed = counted("charges_failed")

    expected_errors = (RedisError, OSError)

    def __init__(
        self,
        redis: Redis,
        counters: UsageCounters,
        limiter: RateLimiter,
        capacity: int = 100_000,
        *,
        spool: OutageSpool | None = None,
    ) -> None:
        self._redis = redis
        self._usage_counters = counters
        self._limiter = limiter
        self.spool = spool
        self.counters = access_counters(
            "usage", "written", "failed", "dropped", "spooled", "replayed", "lost", "charges_failed"
        )
        self._drain: Drain[UsageEntry] = Drain(
            self,
            self.counters,
            name="usage recorder",
            policy=Policy.DROP,
            capacity=capacity,
            batch_items=_BATCH,
            linger_s=_LINGER_S,
        )

    def submit(self, entry: UsageEntry) -> None:
        self._drain.submit(entry)

    def start(self) -> None:
        self._drain.start()

    async def stop(self, deadline_s: float = 2.0) -> None:
        await self._drain.stop(deadline_s)

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self._drain),
            "written": self.written,
            "failed": self.failed,
            "spooled": self.spooled,
            "replayed": self.replayed,
            "lost": self.lost,
            "charges_failed": self.charges_failed,
            "dropped": self.dropped,
        }

    async def send(self, batch: list[UsageEntry]) -> Undelivered[UsageEntry] | None:
        """Write the usage, then charge the buckets whether or not it was written."""
        failure: Undelivered[UsageEntry] | None = None
        try:
            await self._write(batch)
            self.counters.inc("written", len(batch))
        except (RedisError, OSError) as exc:
            failure = Undelivered(batch, exc)
        await self._charge(batch)
        return failure

    async def _charge(self, batch: list[UsageEntry]) -> None:
        by_org: dict[str, list[Bucket]] = {}  # one call per org: a script's keys share one slot
        for entry in batch:
            by_org.setdefault(entry.org_id if self._usage_counters.cluster else "", []).extend(
                entry.charges
            )
        for charges in by_org.values():
            if not charges:
                continue
            try:
                await self._limiter.acquire_many(charges)
            except (RedisError, OSError) as exc:
                self.counters.inc("charges_failed", len(charges))
                log.warning("could not charge %d rate-limit buckets: %s", len(charges), exc)

    async def on_failure(self, failure: Undelivered[UsageEntry]) -> None:
        """Spool the usage Redis did not take (counted ``failed``), or count it lost."""
        batch = failure.items
        if not batch:  # a send cut short by the stop deadline: its entries are still queued
            return
        self.counters.inc("failed", len(batch))
        cause = f"{type(failure.error).__name__}: {failure.error}"
        if self.spool is not None:
            lines = [
                _spooled_encoder.encode(
                    SpooledUsage(e.key_id, e.tokens, e.cost_usd, e.now_ms, e.org_id)
                )
                for e in batch
            ]
            try:
                await asyncio.to_thread(self.spool.append, USAGE, lines)
                self.counters.inc("spooled", len(batch))
                if self.spooled == len(batch) or self.spooled % 1000 < len(batch):
                    log.warning("usage of %d requests spooled (%s)", self.spooled, cause)
                return
            except OSError as spool_exc:
                cause = f"{cause}; spool: {spool_exc}"
        self.counters.inc("lost", len(batch))
        log.error(
            "could not record usage of %d requests (%s); %d lost so far",
            len(batch),
            cause,
            self.lost,
        )

    async def left_at_stop(self, drain: Drain[UsageEntry]) -> None:
        """Usage still queued at the deadline goes where a failed batch goes."""
        await self.on_failure(Undelivered(drain.held(), TimeoutError("the stop deadline passed")))

    async def _write(self, batch: list[UsageEntry]) -> None:
        last_used: dict[str, int] = {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry in merge_usage(batch):
                self._usage_counters.queue_usage(
                    pipe,
                    entry.key_id,
                    entry.tokens,
                    entry.cost_usd,
                    entry.now_ms,
                    org_id=entry.org_id,
                )
                last_used[entry.key_id] = max(entry.now_ms, last_used.get(entry.key_id, 0))
            self._usage_counters.queue_last_used(pipe, last_used)
            await pipe.execute()

    async def replay(self, payloads: list[bytes], offset_key: str, end_offset: int) -> None:
        """Deliver spooled usage (the drain's ``Deliver``): every increment and the file's new
        offset in one MULTI/EXEC, so a batch counts once even if the drainer dies."""
        entries: list[SpooledUsage] = []
        for payload in payloads:
            try:
                entries.append(_spooled_decoder.decode(payload))
            except msgspec.DecodeError as exc:  # a line torn by a crash: nothing to count
                self.counters.inc("lost")
                log.error("unreadable usage line skipped (%s): %.80r", exc, payload)
        async with self._redis.pipeline(transaction=True) as pipe:
            for e in entries:
                self._usage_counters.queue_usage(
                    pipe, e.key_id, e.tokens, e.cost_usd, e.now_ms, org_id=e.org_id
                )
            pipe.set(offset_key, end_offset, ex=OFFSET_TTL_S)
            await pipe.execute()
        self.counters.inc("replayed", len(entries))


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
                org_id=ctx.api_key.org_id,
            )
        )
