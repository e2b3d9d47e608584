"""The response cache's stores for one worker: the exact tier (Redis) and the embedding tiers
(Qdrant), and the writes that run after a miss's response.

Invariants:
- Writes never hold up a response: ``schedule_write`` starts a task and returns. At most
  ``max_pending_writes`` run at once; beyond that a write is dropped, logged and counted (a
  dropped write is a later miss, never a wrong answer).
- Every failure is counted here (``shared.metrics``: ``stats()`` → ``GET /health``, the same
  counters → ``GET /metrics``) and logged (one line per kind
  per second at most); lookups fail open (the stage turns the error into a miss), writes are
  best effort. After a Redis failure the exact tier leaves Redis alone for a second
  (``REDIS_COOLDOWN_S``), so an outage costs a request no connection attempt for the cache.
- ``close`` waits a moment for writes in flight, so a clean shutdown keeps the last answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

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

REDIS_COOLDOWN_S = 1.0
FAIL_OPEN_ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    OSError,
    TimeoutError,
    DependencyError,
)
"""Failures of a store that make a lookup a miss instead of an error."""


@dataclass(frozen=True, slots=True)
class CacheWrite:
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


def _exact_lookup(answer: CachedAnswer | None, oldest_ms: int) -> Lookup | None:
    if answer is None or answer.created_at_ms < oldest_ms:
        return None
    return Lookup(CacheTier.EXACT, answer)


class ResponseCache:
    writes = counted("writes")
    writes_dropped = counted("writes_dropped")
    verifier_rejections = counted("verifier_rejections")

    def __init__(
        self,
        exact: ExactCache,
        semantic: SemanticCache | None = None,
        *,
        max_pending_writes: int = 1000,
    ) -> None:
        self.exact = exact
        self.semantic = semantic
        self.fail_open_errors = FAIL_OPEN_ERRORS
        self._max_pending = max_pending_writes
        self._pending: set[asyncio.Task[None]] = set()
        self.counters = access_counters("cache", "writes", "writes_dropped", "verifier_rejections")
        tiers = [tier.value for tier in CacheTier]
        self.fail_open = access_counters("cache_fail_open", *tiers)
        """Lookups that failed open, per tier."""
        self.write_failures = access_counters("cache_write_failures", *tiers, "schedule", "prune")
        """Writes that failed, per tier; ``schedule``: a write that could not even start;
        ``prune``: local mode's hourly deletion of expired points."""
        self._pruner: asyncio.Task[None] | None = None
        self._redis_down_until = 0.0
        self._logged_at: dict[str, float] = {}

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
        if time.monotonic() < self._redis_down_until:
            raise RedisError("Redis failed less than a second ago; exact tier skipped")

    def redis_down(self) -> bool:
        return time.monotonic() < self._redis_down_until

    async def look_up_exact(self, org_id: str, key_hash: str, oldest_ms: int) -> Lookup | None:
        self._redis_available()
        try:
            answer = await self.exact.get(org_id, key_hash)
        except (RedisError, OSError):
            self._redis_down_until = time.monotonic() + REDIS_COOLDOWN_S
            raise
        return _exact_lookup(answer, oldest_ms)

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
        if len(self._pending) >= self._max_pending:
            self.counters.inc("writes_dropped")
            log.warning("cache write dropped: %d writes already in flight", len(self._pending))
            return
        task = asyncio.get_running_loop().create_task(self._write(write))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, write: CacheWrite) -> None:
        """The answer goes to Redis whatever the tiers (the embedding tiers' points name it),
        then one point per embedding tier that has its vector."""
        tiers = [CacheTier.EXACT, *(t for t in write.plan.tiers if t in write.vectors)]
        for tier in tiers:
            try:
                await self._write_tier(tier, write)
                self.counters.inc("writes")
            except Exception as exc:  # noqa: BLE001 - best effort, counted and logged
                self.write_failures.inc(tier.value)
                self._log_failure(f"{tier.value} write", self.write_failures.get(tier.value), exc)
                if tier is CacheTier.EXACT:
                    if isinstance(exc, RedisError | OSError):
                        self._redis_down_until = time.monotonic() + REDIS_COOLDOWN_S
                    return  # a point without its answer would only ever miss

    async def _write_tier(self, tier: CacheTier, write: CacheWrite) -> None:
        plan, keys, answer = write.plan, write.keys, write.answer
        if tier is CacheTier.EXACT:
            self._redis_available()
            await self.exact.put(write.org_id, keys.exact, answer, plan.ttl_s)
            return
        if self.semantic is None:
            return
        await self.semantic.put(
            tier,
            write.vectors[tier],
            scope=scope_of(tier, write.org_id, write.model, plan.seed, keys),
            key_hash=keys.exact,
            created_at_ms=answer.created_at_ms,
            expires_at_ms=answer.created_at_ms + plan.ttl_s * 1000,
            text=keys.last_turn if tier is CacheTier.ADVANCED else "",
        )

    def stats(self) -> dict[str, object]:
        return {
            "fail_open": self.fail_open.snapshot(nonzero=True),
            "writes": self.writes,
            "write_failures": self.write_failures.snapshot(nonzero=True),
            "writes_dropped": self.writes_dropped,
            "writes_pending": len(self._pending),
            "verifier_rejections": self.verifier_rejections,
        }

    async def drain(self, timeout_s: float = 2.0) -> None:
        """Wait (at most ``timeout_s``) for the writes in flight."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)

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

    async def close(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
        await self.drain()
