"""The hot path's one question to the key store: which key and org does this secret stand for.

Invariants:
- Only the SHA-256 of a key is looked up (``<p>:key:<hash>``, written by ``AdminStore``); a
  secret of the wrong shape is refused without a round trip.
- A cache miss costs one round trip (a Lua script reads the key and its org together); on a
  Redis Cluster two (a key and its org live in different slots).
- Results, including "no such key", are cached per process for ``cache_ttl_s``: a revoked key
  stops working on every worker within that many seconds, on the worker that revoked it at once
  (``AdminStore`` calls ``forget``).
- Redis errors: a key seen before (even if its cache entry is past its TTL) is answered from the
  last known entry, logged and counted (``stale_answers``), so a Redis outage does not stop
  traffic of known keys; a key never seen raises the error (authentication never fails open for
  an unknown key). A revocation made during the outage takes effect when Redis is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.clients.expiring_cache import ExpiringCache
from gateway.clients.stored_fields import aw, decode_fields, flatten
from gateway.metrics import access_counters
from gateway.policy.keys import ApiKey, Org, hash_key, looks_like_key
from shared.errors import InvalidApiKeyError
from shared.metrics import counted
from shared.redis_client import is_cluster
from shared.redis_keys import RedisKeys

__all__ = ["KeyAuthenticator"]

log = logging.getLogger(__name__)

_AUTH_LUA = """
local key = redis.call('HGETALL', KEYS[1])
if #key == 0 then return {key, {}} end
local org_id = nil
for i = 1, #key, 2 do
  if key[i] == 'org_id' then org_id = cjson.decode(key[i + 1]) end
end
if not org_id then return {key, {}} end
return {key, redis.call('HGETALL', ARGV[1] .. org_id)}
"""

_CACHE_MAX = 50_000

_Auth = tuple[ApiKey, Org] | None


class KeyAuthenticator:
    """Secret → (key, org) for the auth stage, the admin API's caller and the console."""

    cache_hits = counted("hits")
    cache_misses = counted("misses")
    stale_answers = counted("stale_answers")

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "floopy",
        cache_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._cluster = is_cluster(redis)
        self._k = RedisKeys(prefix, cluster=self._cluster)
        self._cache: ExpiringCache[str, _Auth] = ExpiringCache(
            cache_ttl_s, max_entries=_CACHE_MAX, clock=clock
        )
        self._auth = redis.register_script(_AUTH_LUA)
        self.counters = access_counters("key_cache", "hits", "misses", "stale_answers")

    async def authenticate(self, secret: str) -> tuple[ApiKey, Org]:
        """The key and its org, or InvalidApiKeyError (malformed, unknown, revoked, orphaned)."""
        if not looks_like_key(secret):
            raise InvalidApiKeyError("invalid API key")
        key_hash = hash_key(secret)
        cached = self._cache.lookup(key_hash)
        if cached is not None and cached.fresh:
            self.counters.inc("hits")
            found = cached.value
        else:
            self.counters.inc("misses")
            try:
                found = await self._load(key_hash)
            except (RedisError, OSError) as exc:
                if cached is None:
                    raise
                self.counters.inc("stale_answers")
                log.warning(
                    "key store unreachable (%s: %s); answering key %s from a stale cache entry",
                    type(exc).__name__,
                    exc,
                    cached.value[0].key_id if cached.value else "(unknown)",
                )
                found = cached.value
            self._cache.put(key_hash, found)
        if found is None:
            raise InvalidApiKeyError("invalid API key")
        if found[0].revoked:
            raise InvalidApiKeyError("this API key has been revoked")
        return found

    def forget(self, key_hash: str) -> None:
        """Drop a key's cached answer: this worker's admin writes take effect at once."""
        self._cache.pop(key_hash)

    async def _load(self, key_hash: str) -> _Auth:
        if self._cluster:  # a key and its org live in different slots: two round trips
            key_flat = flatten(await aw(self._redis.hgetall(self._k.api_key(key_hash))))
            org_flat: list[bytes] = []
            if key_flat:
                org_id = decode_fields(ApiKey, key_flat).org_id
                org_flat = flatten(await aw(self._redis.hgetall(self._k.org(org_id))))
        else:
            raw: Any = await self._auth(keys=[self._k.api_key(key_hash)], args=[self._k.org_prefix])
            key_flat, org_flat = raw
        if not key_flat:
            return None
        key = decode_fields(ApiKey, key_flat)
        if not org_flat:
            log.error("API key %s belongs to a missing org %s", key.key_id, key.org_id)
            return None
        return key, decode_fields(Org, org_flat)
