"""The exact tier in Redis: one ``GET`` per lookup, one ``SET … EX`` per write.

Invariants:
- Keys are ``<prefix>:cache:<org_id>:<sha256>``: the org is part of the name as well as of the
  hash, so no lookup of one org can reach another's entry, and an org's entries can be found
  (and flushed) by pattern.
- Values are msgpack ``CachedAnswer``s; an entry expires by its TTL (Redis does it).
- Redis errors are not handled here: the cache stage fails open on them.
"""

from __future__ import annotations

from redis.asyncio import Redis

from gateway.policy.cache import CachedAnswer, decode_answer, encode_answer
from shared.redis_keys import RedisKeys

__all__ = ["ExactCache"]


class ExactCache:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._keys = RedisKeys(prefix)

    def key(self, org_id: str, key_hash: str) -> str:
        return self._keys.response_cache(org_id, key_hash)

    async def get(self, org_id: str, key_hash: str) -> CachedAnswer | None:
        raw = await self._redis.get(self.key(org_id, key_hash))
        return decode_answer(raw) if raw is not None else None

    async def put(self, org_id: str, key_hash: str, answer: CachedAnswer, ttl_s: int) -> None:
        await self._redis.set(self.key(org_id, key_hash), encode_answer(answer), ex=ttl_s)
