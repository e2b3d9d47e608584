"""After the response: a key's tokens and cost go to its usage counters, and token- or cost-unit
rate-limit buckets are charged.

Invariants:
- Never on the request's path: ``submit`` only appends to a bounded in-memory queue, a ``DROP``
  drain (``gateway.clients.drain``); one background task per worker drains it, many requests
  per Redis round trip (``UsageCounters.add``: one script call, plus one forced GCRA call for
  every charge).
- Every entry has an identity (this process's random ``origin`` and a number counting up per
  org), kept by its spooled line: Redis counts an entry once however often it is sent
  (``UsageCounters.add``), so a batch whose answer was lost, or a spool file drained again, is
  not counted twice.
- Usage that cannot be written (Redis down or not answering) is counted (``failed``) and, with
  an outage spool, appended to its ``usage`` file at once (fsynced); the publisher's drain
  replays it when Redis answers, each request counted exactly once, in the day and month it
  happened (``deduplicated`` counts entries Redis had counted already). Without a spool it is
  lost (logged). Token and cost *charges* of rate-limit buckets are not replayed: a bucket's
  window is over by then; they are counted (``charges_failed``) and logged. What does not fit
  in the queue is counted (``dropped``); what is still queued when ``stop``'s deadline passes
  is spooled or counted lost like a failed batch. Until the replay, usage limits are enforced on the
  usage that reached Redis: they under-count during an outage, they never refuse wrongly.
- Redis Cluster: usage keys carry the org's hash tag, so entries (and spooled lines) keep the
  org; usage and charges go in one script call per org (a script's keys share one slot). A
  replayed batch and its file offset cannot be one MULTI there (other slots); a drainer that
  dies between the two sends the batch again, and the entries' identities make that a no-op.
- Counters (``shared.metrics``): what ``stats`` shows is what ``/metrics`` exports.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import RedisError

from gateway.clients.drain import Drain, Outlet, Policy, Undelivered
from gateway.clients.outage_spool import OFFSET_TTL_S, USAGE, OutageSpool
from gateway.clients.ratelimiter import RateLimiter
from gateway.clients.usage_counters import UsageCounters
from gateway.domain import Bucket, UsageEntry
from gateway.metrics import access_counters
from gateway.policy.limits import after_response_cost
from shared.metrics import counted

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from shared.records import RequestRecord

__all__ = ["SpooledUsage", "UsageRecorder", "record_usage"]

log = logging.getLogger(__name__)

_BATCH = 500
_LINGER_S = 0.02
"""Usage may reach Redis this much later; usage limits are daily and monthly, so 20 ms of lag
costs nothing, and it turns one round trip per request into one per batch under load."""


class SpooledUsage(msgspec.Struct, frozen=True):
    """A usage entry as a line of the ``usage`` spool (charges are not kept: see above)."""

    key_id: str
    tokens: int
    cost_usd: float | None
    now_ms: int
    org_id: str = ""
    origin: str = ""
    seq: int = -1


_spooled_encoder = msgspec.json.Encoder()
_spooled_decoder = msgspec.json.Decoder(SpooledUsage)


class UsageRecorder(Outlet[UsageEntry]):
    """The outlet of a ``DROP`` drain of usage entries: a batch that Redis refused is spooled
    (or counted lost), never retried from memory."""

    written = counted("written")
    deduplicated = counted("deduplicated")
    failed = counted("failed")
    dropped = counted("dropped")
    spooled = counted("spooled")
    replayed = counted("replayed")
    lost = counted("lost")
    charges_failed = counted("charges_failed")

    expected_errors = (RedisError, OSError)

    def __init__(
        self,
        counters: UsageCounters,
        limiter: RateLimiter,
        capacity: int = 100_000,
        *,
        spool: OutageSpool | None = None,
    ) -> None:
        self._usage_counters = counters
        self._limiter = limiter
        self.spool = spool
        self.counters = access_counters(
            "usage",
            "written",
            "failed",
            "dropped",
            "spooled",
            "replayed",
            "deduplicated",
            "lost",
            "charges_failed",
        )
        self._origin = uuid.uuid4().hex[:16]
        self._next_seq: dict[str, int] = {}
        self._drain: Drain[UsageEntry] = Drain(
            self,
            self.counters,
            name="usage recorder",
            policy=Policy.DROP,
            capacity=capacity,
            batch_items=_BATCH,
            linger_s=_LINGER_S,
        )

    def submit(
        self,
        key_id: str,
        tokens: int,
        cost_usd: float | None,
        now_ms: int,
        *,
        charges: tuple[Bucket, ...] = (),
        org_id: str = "",
    ) -> None:
        """Queue one request's spend, numbered (its identity, see the invariants)."""
        seq = self._next_seq.get(org_id, 0)
        self._next_seq[org_id] = seq + 1
        self._drain.submit(
            UsageEntry(key_id, tokens, cost_usd, now_ms, charges, org_id, self._origin, seq)
        )

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
            "deduplicated": self.deduplicated,
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
                    SpooledUsage(
                        e.key_id, e.tokens, e.cost_usd, e.now_ms, e.org_id, e.origin, e.seq
                    )
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
        for entry in batch:
            last_used[entry.key_id] = max(entry.now_ms, last_used.get(entry.key_id, 0))
        await self._usage_counters.add(batch, last_used_ms=last_used)

    async def replay(self, payloads: list[bytes], offset_key: str, end_offset: int) -> None:
        """Deliver spooled usage (the drain's ``Deliver``): the entries and the file's new
        offset together; an entry Redis counted already (its live batch got there after all,
        or this batch was sent before a drainer died) is not counted again."""
        entries: list[UsageEntry] = []
        for payload in payloads:
            try:
                e = _spooled_decoder.decode(payload)
            except msgspec.DecodeError as exc:  # a line torn by a crash: nothing to count
                self.counters.inc("lost")
                log.error("unreadable usage line skipped (%s): %.80r", exc, payload)
                continue
            entries.append(
                UsageEntry(e.key_id, e.tokens, e.cost_usd, e.now_ms, (), e.org_id, e.origin, e.seq)
            )
        added = await self._usage_counters.add(
            entries, offset=(offset_key, end_offset, OFFSET_TTL_S)
        )
        self.counters.inc("replayed", len(entries))
        if added < len(entries):
            self.counters.inc("deduplicated", len(entries) - added)
            log.info("%d spooled usage entries were counted already", len(entries) - added)


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
            ctx.api_key.key_id,
            record.total_tokens,
            record.cost_usd,
            record.created_at_ms,
            charges=charges,
            org_id=ctx.api_key.org_id,
        )
