"""The exact tier in Redis: one ``GET`` per lookup (or a read in the limits script), one
``SET … EX`` per write, the writes of a batch in one script call on one node.

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
from shared.redis_client import is_cluster
from shared.redis_keys import RedisKeys

__all__ = ["ExactCache"]


_SET_MANY_LUA = """
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'EX', ARGV[2 * i])
end
return #KEYS
"""
"""KEYS: the entries' keys; ARGV: (value, TTL in seconds) pairs in the same order."""


class ExactCache:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._keys = RedisKeys(prefix)
        self.batches = not is_cluster(redis)
        """``put_many`` works: one node (on a cluster the entries' keys are in many slots)."""
        self._set_many = redis.register_script(_SET_MANY_LUA)

    def key(self, org_id: str, key_hash: str) -> str:
        return self._keys.response_cache(org_id, key_hash)

    async def get(self, org_id: str, key_hash: str) -> CachedAnswer | None:
        raw = await self._redis.get(self.key(org_id, key_hash))
        return decode_answer(raw) if raw is not None else None

    async def put(self, org_id: str, key_hash: str, answer: CachedAnswer, ttl_s: int) -> None:
        await self._redis.set(self.key(org_id, key_hash), encode_answer(answer), ex=ttl_s)

    async def put_many(self, entries: list[tuple[str, str, CachedAnswer, int]]) -> None:
        """``(org_id, key_hash, answer, ttl_s)`` each, in one script call: redis-py packs a
        command in Python, so a batch of writes costs the gateway one command instead of one
        per answer (not on a cluster: ``batches``)."""
        keys: list[str] = []
        args: list[bytes | int] = []
        for org_id, key_hash, answer, ttl_s in entries:
            keys.append(self.key(org_id, key_hash))
            args += [encode_answer(answer), ttl_s]
        await self._set_many(keys=keys, args=args)
