"""The exact tier in Redis: one ``GET`` per lookup, the lookups of concurrent requests sent
together (``gateway.clients.command_batch``: one pipeline, one per node on a cluster); writes go
in batches, one pipeline of ``SET … EX`` per batch (``ResponseCache``'s drain sends them).

Invariants:
- Keys are ``<prefix>:cache:<org_id>:<sha256>``: the org is part of the name as well as of the
  hash, so no lookup of one org can reach another's entry, and an org's entries can be found
  (and flushed) by pattern.
- Values are msgpack ``CachedAnswer``s; an entry expires by its TTL (Redis does it).
- A batch is a pipeline, not a MULTI: its keys are independent, and on a Redis Cluster they lie
  in many slots (redis-py's cluster pipeline sends each node its share). A failed batch may have
  stored part of its entries; that is harmless, the caller counts the whole batch as failed.
- Redis errors are not handled here: the cache stage fails open on them, the writer counts them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from redis.asyncio import Redis

from gateway.clients.command_batch import get_batch
from gateway.policy.cache import CachedAnswer, decode_answer, encode_answer
from shared.redis_keys import RedisKeys

__all__ = ["ExactCache", "ExactEntry"]

ExactEntry = tuple[str, str, CachedAnswer, int]
"""What one write stores: the org, the key's hash, the answer and its TTL in seconds."""


class ExactCache:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._keys = RedisKeys(prefix)
        self._get = get_batch(redis)

    def key(self, org_id: str, key_hash: str) -> str:
        return self._keys.response_cache(org_id, key_hash)

    async def get(self, org_id: str, key_hash: str) -> CachedAnswer | None:
        raw = await self._get((self.key(org_id, key_hash),))
        return decode_answer(raw) if raw is not None else None

    def submit_get(self, key: str) -> asyncio.Future[bytes | None]:
        """The raw entry under ``key``, read with the next batch of lookups: sent now, awaited
        later (the caller must await the future or retrieve its exception)."""
        return self._get.submit((key,))

    async def put_many(self, entries: Iterable[ExactEntry]) -> None:
        """Store every entry in one round trip (one per node on a cluster)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for org_id, key_hash, answer, ttl_s in entries:
                pipe.set(self.key(org_id, key_hash), encode_answer(answer), ex=ttl_s)
            await pipe.execute()
