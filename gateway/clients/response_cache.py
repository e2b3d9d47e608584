"""The response cache's stores for one worker: the exact tier (Redis) and the embedding tiers
(Qdrant), and the writes that run after a miss's response.

Invariants:
- Writes never hold up a response: ``schedule_write`` only queues the write in a ``DROP`` drain
  (``gateway.clients.drain``), one per worker, whose one task sends the exact entries in
  batches (``WRITE_BATCH`` at most, after ``WRITE_LINGER_S``), one Redis pipeline each: a miss
  costs the worker no task and no round trip of its own (``write_batches`` counts the
  pipelines, so ``/health`` shows what batching gains). The drain holds at most
  ``max_pending_writes`` writes (answers in memory: the same bound as when each write was a
  task), far more than a worker's misses during one round trip; beyond it a write is dropped
  and counted (``writes_dropped``: a dropped write is a later miss, never a wrong answer).
- A write's embedding-tier points are written only once its exact entry is stored (a point
  without its answer would only ever miss): after the batch's pipeline succeeded, one task per
  write with vectors, at most ``max_pending_writes`` of them at once (beyond: dropped, counted),
  so a slow Qdrant never holds up the exact tier's batches.
- ``writes_pending`` is what is not finished yet: writes queued in the drain (a batch leaves it
  only once sent) plus the embedding-tier tasks, which start before their batch leaves.
- Every failure is counted here (``shared.metrics``: ``stats()`` → ``GET /health``, the same
  counters → ``GET /metrics``) and logged (one line per kind
  per second at most); lookups fail open (the stage turns the error into a miss), writes are
  best effort: a batch Redis refused is counted (``write_failures``, per write) and dropped.
  After Redis was unreachable or timed out, for the cache or another caller sharing its
  cooldown (the limits), the exact tier leaves Redis alone for a second (``REDIS_COOLDOWN_S``),
  so an outage costs a request no connection attempt for the cache, and the writes of that
  second are counted as failed without being queued.
- ``close`` sends what is queued within ``STOP_DEADLINE_S`` (what is left is counted dropped and
  logged) and waits a moment for the embedding tiers, so a clean shutdown keeps the last
  answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import RedisError

from gateway.clients.cooldown import Cooldown, redis_cooldown
from gateway.clients.drain import Drain, Outlet, Policy, Undelivered
from gateway.clients.exact_cache import ExactCache
from gateway.clients.semantic_cache import COLLECTIONS, SemanticCache
from gateway.metrics import access_counters
from gateway.policy.cache import CachedAnswer, CachePlan, CacheTier, decode_answer
from gateway.policy.cache_verify import verify_turns
from shared.errors import DependencyError
from shared.metrics import counted

if TYPE_CHECKING:
    from gateway.policy.cache_key import RequestKeys

__all__ = ["FAIL_OPEN_ERRORS", "CacheWrite", "Lookup", "ResponseCache", "scope_of"]

log = logging.getLogger(__name__)

WRITE_BATCH = 256
WRITE_LINGER_S = 0.002
"""An answer may reach Redis this much later (the client already has it); under load it turns
one round trip per miss into one per batch."""
STOP_DEADLINE_S = 1.0
FAIL_OPEN_ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    OSError,
    TimeoutError,
    DependencyError,
)
"""Failures of a store that make a lookup a miss instead of an error."""


class CacheWrite(msgspec.Struct, frozen=True):
    """A miss's answer and where it goes."""

    org_id: str
    model: str
    plan: CachePlan
    keys: RequestKeys
    vectors: dict[CacheTier, list[float]]
    answer: CachedAnswer


@dataclass(frozen=True, slots=True)
class Lookup:
    tier: CacheTier
    answer: CachedAnswer
    similarity: float | None = None


def scope_of(
    tier: CacheTier, org_id: str, model: str, seed: str, keys: RequestKeys
) -> dict[str, str]:
    """The ``must`` filter of a tier's search (and the same fields in what it writes)."""
    _, field, _ = COLLECTIONS[tier]
    value = keys.params_hash if tier is CacheTier.SEMANTIC else keys.prefix_hash
    return {"org_id": org_id, "model": model, "seed": seed, field: value}


def _cooldown_error() -> RedisError:
    return RedisError("Redis failed less than a second ago; exact tier skipped")


def _exact_lookup(answer: CachedAnswer | None, oldest_ms: int) -> Lookup | None:
    if answer is None or answer.created_at_ms < oldest_ms:
        return None
    return Lookup(CacheTier.EXACT, answer)


class ResponseCache(Outlet[CacheWrite]):
    """Also the outlet of its exact-tier writes' drain."""

    writes = counted("writes")
    write_batches = counted("write_batches")
    writes_dropped = counted("dropped")
    verifier_rejections = counted("verifier_rejections")
    prefetch_failures = counted("prefetch_failures")

    expected_errors = (RedisError, OSError)

    def __init__(
        self,
        exact: ExactCache,
        semantic: SemanticCache | None = None,
        *,
        max_pending_writes: int = 1000,
        cooldown: Cooldown | None = None,
    ) -> None:
        """``cooldown``: Redis's, shared with its other callers (``redis_cooldown``)."""
        self.exact = exact
        self.semantic = semantic
        self.fail_open_errors = FAIL_OPEN_ERRORS
        self._max_pending = max_pending_writes
        self._pending: set[asyncio.Task[None]] = set()
        self.counters = access_counters(
            "cache",
            "writes",
            "write_batches",
            "verifier_rejections",
            "prefetch_failures",
            dropped="writes_dropped",
        )
        tiers = [tier.value for tier in CacheTier]
        self.fail_open = access_counters("cache_fail_open", *tiers)
        """Lookups that failed open, per tier."""
        self.write_failures = access_counters("cache_write_failures", *tiers, "schedule", "prune")
        """Writes that failed, per tier; ``schedule``: a write that could not even start;
        ``prune``: local mode's hourly deletion of expired points."""
        self._pruner: asyncio.Task[None] | None = None
        self.redis_cooldown = cooldown or redis_cooldown()
        self._logged_at: dict[str, float] = {}
        self._writes: Drain[CacheWrite] = Drain(
            self,
            self.counters,
            name="cache writes",
            policy=Policy.DROP,
            capacity=max_pending_writes,
            batch_items=WRITE_BATCH,
            linger_s=WRITE_LINGER_S,
        )

    def start(self) -> None:
        """Start the writes' drain (on the worker's loop): until then writes only queue."""
        self._writes.start()

    def count_fail_open(self, tier: CacheTier, exc: BaseException) -> None:
        self.fail_open.inc(tier.value)
        self._log_failure(f"{tier.value} lookup", self.fail_open.get(tier.value), exc)

    def _log_failure(self, what: str, count: int, exc: BaseException) -> None:
        """One line per kind of failure per second at most: an outage is not 1,000 lines/s."""
        now = time.monotonic()
        if now - self._logged_at.get(what, -1e9) >= 1.0:
            self._logged_at[what] = now
            log.warning(
                "cache %s failed (%s: %s); %d so far, failing open",
                what,
                type(exc).__name__,
                exc,
                count,
            )

    def _redis_available(self) -> None:
        """After a Redis failure the exact tier skips Redis for ``REDIS_COOLDOWN_S``: during an
        outage a request pays no connection attempt for the cache, only the note."""
        if self.redis_cooldown.active:
            raise _cooldown_error()

    def redis_down(self) -> bool:
        return self.redis_cooldown.active

    async def look_up_exact(self, org_id: str, key_hash: str, oldest_ms: int) -> Lookup | None:
        self._redis_available()
        try:
            answer = await self.exact.get(org_id, key_hash)
        except (RedisError, OSError) as exc:
            self.redis_cooldown.failed(exc)
            raise
        return _exact_lookup(answer, oldest_ms)

    def prefetch_exact(self, key: str) -> asyncio.Future[bytes | None]:
        """Start reading the exact tier's entry under ``key`` now, for ``prefetched`` to take
        later: the limits stage on a Redis Cluster, whose script cannot read it (another slot),
        sends it beside its own call. A request the limits refuse never takes it: its error, if
        any, is retrieved here so asyncio does not report it."""
        future = self.exact.submit_get(key)
        future.add_done_callback(_retrieve)
        return future

    async def prefetched(self, future: asyncio.Future[bytes | None]) -> tuple[bool, bytes | None]:
        """``(True, entry)`` once read; ``(False, None)`` when the read failed: then the cache
        stage looks the entry up itself (and notes the failure as it does for its own), unless
        this failure started the Redis cooldown."""
        try:
            return True, await future
        except (RedisError, OSError) as exc:
            self.redis_cooldown.failed(exc)
            self.counters.inc("prefetch_failures")
            self._log_failure("prefetch", self.prefetch_failures, exc)
            return False, None

    def exact_entry(self, raw: bytes | None, oldest_ms: int) -> Lookup | None:
        """The exact tier's lookup of an entry already read (by the limits script)."""
        return _exact_lookup(decode_answer(raw) if raw is not None else None, oldest_ms)

    async def look_up_vector(
        self,
        tier: CacheTier,
        vector: list[float],
        *,
        org_id: str,
        model: str,
        plan: CachePlan,
        keys: RequestKeys,
    ) -> Lookup | None:
        """Semantic: the nearest point at or above the threshold. Advanced: the top k above its
        lower threshold, the first whose stored last turn passes the lexical verifier."""
        if self.semantic is None:
            return None
        advanced = tier is CacheTier.ADVANCED
        hits = await self.semantic.search(
            tier,
            vector,
            scope=scope_of(tier, org_id, model, plan.seed, keys),
            threshold=plan.advanced_threshold if advanced else plan.semantic_threshold,
            limit=plan.advanced_top_k if advanced else 1,
            oldest_ms=plan.min_created_at_ms,
        )
        for hit in hits:
            if advanced:
                stored = str(hit.payload.get("text", ""))
                if not verify_turns(keys.last_turn, stored, plan.advanced_overlap).same:
                    self.counters.inc("verifier_rejections")
                    continue
            found = await self.look_up_exact(
                org_id, str(hit.payload.get("key_hash", "")), plan.min_created_at_ms
            )
            if found is not None:
                return Lookup(tier, found.answer, round(hit.score, 6))
        return None

    def schedule_write(self, write: CacheWrite) -> None:
        if self.redis_cooldown.active:
            self._count_exact_failures(1, _cooldown_error())
        elif self._writes.stopping:
            self._count_dropped(1, "the cache is closed")
        else:
            self._writes.submit(write)

    async def send(self, batch: list[CacheWrite]) -> Undelivered[CacheWrite] | None:
        """The batch's answers to Redis in one pipeline whatever the tiers (the embedding
        tiers' points name them), then the points of the writes that have vectors."""
        if self.redis_cooldown.active:  # queued before the failure
            return Undelivered(batch, _cooldown_error())
        try:
            await self.exact.put_many(
                (w.org_id, w.keys.exact, w.answer, w.plan.ttl_s) for w in batch
            )
        except (RedisError, OSError) as exc:
            self.redis_cooldown.failed(exc)
            return Undelivered(batch, exc)
        self.counters.inc("writes", len(batch))
        self.counters.inc("write_batches")
        if self.semantic is not None:
            for write in batch:
                if write.vectors:
                    self._schedule_vectors(write)
        return None

    async def on_failure(self, failure: Undelivered[CacheWrite]) -> None:
        if failure.items:  # none: a send cut short at stop, its writes are still queued
            self._count_exact_failures(len(failure.items), failure.error)

    async def left_at_stop(self, drain: Drain[CacheWrite]) -> None:
        self._count_dropped(len(drain), "still queued when the cache closed")

    def hold_at_stop(self) -> bool:
        return self.redis_down()

    def _count_exact_failures(self, n: int, exc: BaseException) -> None:
        self.write_failures.inc(CacheTier.EXACT.value, n)
        self._log_failure("exact write", self.write_failures.get(CacheTier.EXACT.value), exc)

    def _count_dropped(self, n: int, why: str) -> None:
        self.counters.inc("dropped", n)
        now = time.monotonic()
        if now - self._logged_at.get("dropped", -1e9) >= 1.0:
            self._logged_at["dropped"] = now
            log.warning("%d cache writes dropped (%s); %d so far", n, why, self.writes_dropped)

    def _schedule_vectors(self, write: CacheWrite) -> None:
        tiers: list[CacheTier] = [
            t for t in write.plan.tiers if t in write.vectors and t is not CacheTier.EXACT
        ]
        if not tiers:
            return
        if len(self._pending) >= self._max_pending:
            self._count_dropped(1, f"{len(self._pending)} embedding-tier writes in flight")
            return
        task = asyncio.get_running_loop().create_task(self._write_vectors(write, tiers))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write_vectors(self, write: CacheWrite, tiers: list[CacheTier]) -> None:
        """One point per embedding tier, each tier on its own (one failing spares the other)."""
        assert self.semantic is not None
        plan, keys, answer = write.plan, write.keys, write.answer
        for tier in tiers:
            try:
                await self.semantic.put(
                    tier,
                    write.vectors[tier],
                    scope=scope_of(tier, write.org_id, write.model, plan.seed, keys),
                    key_hash=keys.exact,
                    created_at_ms=answer.created_at_ms,
                    expires_at_ms=answer.created_at_ms + plan.ttl_s * 1000,
                    text=keys.last_turn if tier is CacheTier.ADVANCED else "",
                )
                self.counters.inc("writes")
            except Exception as exc:  # noqa: BLE001 - best effort, counted and logged
                self.write_failures.inc(tier.value)
                self._log_failure(f"{tier.value} write", self.write_failures.get(tier.value), exc)

    def stats(self) -> dict[str, object]:
        return {
            "fail_open": self.fail_open.snapshot(nonzero=True),
            "writes": self.writes,
            "write_batches": self.write_batches,
            "write_failures": self.write_failures.snapshot(nonzero=True),
            "writes_dropped": self.writes_dropped,
            "writes_pending": len(self._writes) + len(self._pending),
            "verifier_rejections": self.verifier_rejections,
            "prefetch_failures": self.prefetch_failures,
        }

    def start_pruning(self, every_s: float = 3600.0) -> None:
        """Local mode only: no other process can reach this worker's vectors, so it deletes its
        own expired points (hourly; a server is pruned by the ingester's job)."""
        if self.semantic is not None and self._pruner is None:
            self._pruner = asyncio.get_running_loop().create_task(self._prune_every(every_s))

    async def _prune_every(self, every_s: float) -> None:
        assert self.semantic is not None
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.semantic.prune(int(time.time() * 1000))
            except DependencyError as exc:
                self.write_failures.inc("prune")
                self._log_failure("prune", self.write_failures.get("prune"), exc)

    async def close(self, vectors_timeout_s: float = 2.0) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
        await self._writes.stop(STOP_DEADLINE_S)
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=vectors_timeout_s)


def _retrieve(future: asyncio.Future[bytes | None]) -> None:
    if not future.cancelled():
        future.exception()
