"""API keys, orgs and usage counters in Redis, with an in-process cache for the hot path.

Invariants:
- Key names come from ``shared.redis_keys``; org and key ids are checked against its charset
  when written, so no id reaches into another's keys.
- Only the SHA-256 of a key is stored: ``<p>:key:<hash>`` is a hash whose fields are the
  ``ApiKey`` fields, each JSON-encoded; ``<p>:keyid:<key_id>`` → hash lets admins revoke by id;
  ``<p>:org:<org_id>`` holds the ``Org`` the same way, ``<p>:org:<org_id>:keys`` the key hashes.
- ``<p>:key_last_used`` is a hash key id → unix ms of its latest request with usage, written
  with the usage counters (batched, after responses), read by admins only.
- A cache miss costs one round trip (a Lua script reads the key and its org together).
- Authentication results, including "no such key", are cached per process for ``cache_ttl_s``:
  a revoked key stops working on every worker within that many seconds.
- Usage counters are per UTC period and expire a while after it ends; one pipelined round trip
  writes them (``HINCRBY``/``HINCRBYFLOAT`` + ``EXPIREAT``) and one reads them.
- Redis errors: a key seen before (even if its cache entry is past its TTL) is answered from the
  last known entry, logged and counted (``stale_answers``), so a Redis outage does not stop
  traffic of known keys; a key never seen raises the error (authentication never fails open for
  an unknown key). A revocation made during the outage takes effect when Redis is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, TypeVar, cast

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from gateway.clients.expiring_cache import ExpiringCache
from gateway.policy.cache import CacheSettings
from gateway.policy.firewall import FirewallConfig
from gateway.policy.keys import (
    ApiKey,
    KeyLimits,
    KeySwitches,
    NewKey,
    Org,
    Permission,
    Usage,
    day_period,
    generate_key,
    hash_key,
    looks_like_key,
    month_period,
)
from shared.errors import InvalidApiKeyError
from shared.redis_keys import RedisKeys, check_id
from shared.streams import retention_key

__all__ = ["ORG_SETTINGS", "KeyStore", "usage_expiry_s"]

log = logging.getLogger(__name__)

_S = TypeVar("_S", ApiKey, Org)
_T = TypeVar("_T")

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

_SET_ORG_FIELD_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

_CACHE_MAX = 50_000
ORG_SETTINGS = ("cache",)
"""Org fields written by their own route (``PUT /admin/orgs/{org}/cache``), kept by org puts."""
_DAY_GRACE = timedelta(days=2)
_MONTH_GRACE = timedelta(days=40)

_Auth = tuple[ApiKey, Org] | None


def _encode_fields(struct: msgspec.Struct) -> dict[str, bytes]:
    raw = msgspec.to_builtins(struct)
    return {name: msgspec.json.encode(value) for name, value in raw.items()}


def _decode_fields(kind: type[_S], flat: Iterable[bytes]) -> _S:
    items = list(flat)
    raw = {items[i].decode(): msgspec.json.decode(items[i + 1]) for i in range(0, len(items), 2)}
    return msgspec.convert(raw, kind)


def _period_end(now_ms: int, monthly: bool) -> int:
    return _period_end_of_day(now_ms // 86_400_000, monthly)


@lru_cache(maxsize=64)
def _period_end_of_day(day: int, monthly: bool) -> int:
    now = datetime.fromtimestamp(day * 86_400, UTC)
    if monthly:
        first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (first + timedelta(days=32)).replace(day=1) + _MONTH_GRACE
    else:
        end = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        end += _DAY_GRACE
    return int(end.timestamp())


def usage_expiry_s(now_ms: int, monthly: bool) -> int:
    """When a usage counter of the period holding ``now_ms`` may go (a grace after its end)."""
    return _period_end(now_ms, monthly)


class KeyStore:
    """Keys and orgs for the gateway (hot path: ``authenticate``) and for the admin API/CLI."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "floopy",
        cache_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._k = RedisKeys(prefix)
        self._p = prefix
        self._cache: ExpiringCache[str, _Auth] = ExpiringCache(
            cache_ttl_s, max_entries=_CACHE_MAX, clock=clock
        )
        self._auth = redis.register_script(_AUTH_LUA)
        self._set_org_field = redis.register_script(_SET_ORG_FIELD_LUA)
        self.cache_hits = 0
        self.cache_misses = 0
        self.stale_answers = 0

    # -- hot path ---------------------------------------------------------------------------

    async def authenticate(self, secret: str) -> tuple[ApiKey, Org]:
        """The key and its org, or InvalidApiKeyError (malformed, unknown, revoked, orphaned)."""
        if not looks_like_key(secret):
            raise InvalidApiKeyError("invalid API key")
        key_hash = hash_key(secret)
        cached = self._cache.lookup(key_hash)
        if cached is not None and cached.fresh:
            self.cache_hits += 1
            found = cached.value
        else:
            self.cache_misses += 1
            try:
                found = await self._load(key_hash)
            except (RedisError, OSError) as exc:
                if cached is None:
                    raise
                self.stale_answers += 1
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

    async def _load(self, key_hash: str) -> _Auth:
        raw: Any = await self._auth(keys=[self._k.api_key(key_hash)], args=[self._k.org_prefix])
        key_flat, org_flat = raw
        if not key_flat:
            return None
        key = _decode_fields(ApiKey, key_flat)
        if not org_flat:
            log.error("API key %s belongs to a missing org %s", key.key_id, key.org_id)
            return None
        return key, _decode_fields(Org, org_flat)

    # -- usage counters ---------------------------------------------------------------------

    def request_counter(self, org_id: str, now_ms: int) -> str:
        """The org's monthly request counter (the limits script increments it)."""
        return self._k.org_requests(org_id, month_period(now_ms))

    def usage_keys(self, key_id: str, now_ms: int) -> tuple[str, str]:
        day, month = f"d:{day_period(now_ms)}", f"m:{month_period(now_ms)}"
        return self._k.key_usage(key_id, day), self._k.key_usage(key_id, month)

    async def count_request(self, org_id: str, now_ms: int) -> int:
        """Count one request against the org's monthly quota; returns the count including it."""
        counter = self.request_counter(org_id, now_ms)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incr(counter)
            pipe.expireat(counter, _period_end(now_ms, monthly=True))
            count, _ = await pipe.execute()
        return int(count)

    async def count_request_and_usage(
        self, org_id: str, key_id: str, now_ms: int
    ) -> tuple[int, Usage]:
        """What the limits stage needs, in one round trip: this request counted against the org's
        monthly quota (the count including it) and the key's usage so far."""
        counter = self.request_counter(org_id, now_ms)
        day, month = self.usage_keys(key_id, now_ms)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incr(counter)
            pipe.expireat(counter, _period_end(now_ms, monthly=True))
            pipe.hmget(day, ["tokens", "cost"])
            pipe.hmget(month, ["tokens", "cost"])
            count, _, (d_tok, d_cost), (m_tok, m_cost) = await pipe.execute()
        return int(count), _usage(d_tok, d_cost, m_tok, m_cost)

    def queue_usage(
        self, pipe: Pipeline, key_id: str, tokens: int, cost_usd: float | None, now_ms: int
    ) -> None:
        """Add a request's spend to the key's day and month counters, on ``pipe``."""
        day, month = self.usage_keys(key_id, now_ms)
        for counter, monthly in ((day, False), (month, True)):
            pipe.hincrby(counter, "tokens", tokens)
            if cost_usd:
                pipe.hincrbyfloat(counter, "cost", cost_usd)
            pipe.expireat(counter, _period_end(now_ms, monthly))

    def queue_last_used(self, pipe: Pipeline, last_used_ms: Mapping[str, int]) -> None:
        if last_used_ms:
            pipe.hset(
                self._k.key_last_used,
                mapping={k: str(v) for k, v in last_used_ms.items()},
            )

    async def last_used(self, key_ids: list[str]) -> dict[str, int]:
        if not key_ids:
            return {}
        raw = await _aw(self._redis.hmget(self._k.key_last_used, key_ids))
        return {k: int(v) for k, v in zip(key_ids, raw, strict=True) if v is not None}

    async def record_usage(
        self, key_id: str, tokens: int, cost_usd: float | None, now_ms: int
    ) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            self.queue_usage(pipe, key_id, tokens, cost_usd, now_ms)
            await pipe.execute()

    async def usage(self, key_id: str, now_ms: int) -> Usage:
        day, month = self.usage_keys(key_id, now_ms)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(day, ["tokens", "cost"])
            pipe.hmget(month, ["tokens", "cost"])
            (d_tok, d_cost), (m_tok, m_cost) = await pipe.execute()
        return _usage(d_tok, d_cost, m_tok, m_cost)

    # -- administration ---------------------------------------------------------------------

    async def put_org(self, org: Org, *, with_settings: bool = False) -> None:
        """Write the org's name, plan and rate limit; its feature settings (``cache``) are
        kept as stored unless ``with_settings`` (they have their own admin route)."""
        check_id("org", org.org_id)
        fields = _encode_fields(org)
        if not with_settings:
            for name in ORG_SETTINGS:
                fields.pop(name, None)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._k.org(org.org_id), mapping=fields)
            pipe.hset(retention_key(self._p), org.org_id, str(org.plan.retention_days))
            await pipe.execute()

    async def put_org_cache(self, org_id: str, cache: CacheSettings) -> bool:
        """Replace one org's cache settings, nothing else; False if there is no such org."""
        done = await self._set_org_field(
            keys=[self._k.org(org_id)], args=["cache", msgspec.json.encode(cache.view())]
        )
        return bool(done)

    async def put_org_firewall(self, org_id: str, config: FirewallConfig) -> bool:
        """Replace one org's firewall settings, nothing else; False if there is no such org."""
        done = await self._set_org_field(
            keys=[self._k.org(check_id("org", org_id))],
            args=["firewall", msgspec.json.encode(config)],
        )
        return bool(done)

    async def get_org(self, org_id: str) -> Org | None:
        flat = await _aw(self._redis.hgetall(self._k.org(org_id)))
        return _decode_fields(Org, _flatten(flat)) if flat else None

    async def create_key(
        self,
        org_id: str,
        *,
        name: str = "",
        permissions: frozenset[Permission] = frozenset({Permission.PROXY}),
        limits: KeyLimits | None = None,
        switches: KeySwitches | None = None,
        now_ms: int | None = None,
    ) -> tuple[NewKey, ApiKey]:
        """Create a key; the returned ``NewKey.secret`` is the only time anyone sees it."""
        check_id("org", org_id)
        new = generate_key()
        key = ApiKey(
            key_id=new.key_id,
            key_hash=new.key_hash,
            org_id=org_id,
            name=name,
            hint=new.secret[-4:],
            created_at_ms=now_ms if now_ms is not None else int(time.time() * 1000),
            permissions=permissions,
            limits=limits or KeyLimits(),
            switches=switches or KeySwitches(),
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._k.api_key(new.key_hash), mapping=_encode_fields(key))
            pipe.set(self._k.key_id(new.key_id), new.key_hash)
            pipe.sadd(self._k.org_keys(org_id), new.key_hash)
            await pipe.execute()
        return new, key

    async def put_key(self, key: ApiKey) -> ApiKey:
        """Create or update a key whose hash is known (config seed). A revoked key stays revoked:
        re-applying a seed must not bring a leaked key back. Returns the key as stored."""
        check_id("key", key.key_id)
        check_id("org", key.org_id)
        current = await self.get_key(key.key_id)
        if current is not None and current.revoked:
            key = msgspec.structs.replace(key, revoked=True, revoked_at_ms=current.revoked_at_ms)
        async with self._redis.pipeline(transaction=True) as pipe:
            if current is not None and current.key_hash != key.key_hash:
                pipe.delete(self._k.api_key(current.key_hash))
                pipe.srem(self._k.org_keys(current.org_id), current.key_hash)
            pipe.delete(self._k.api_key(key.key_hash))
            pipe.hset(self._k.api_key(key.key_hash), mapping=_encode_fields(key))
            pipe.set(self._k.key_id(key.key_id), key.key_hash)
            pipe.sadd(self._k.org_keys(key.org_id), key.key_hash)
            await pipe.execute()
        self._cache.pop(key.key_hash)
        return key

    async def get_key(self, key_id: str) -> ApiKey | None:
        key_hash = await self._redis.get(self._k.key_id(key_id))
        if key_hash is None:
            return None
        flat = await _aw(self._redis.hgetall(self._k.api_key(key_hash.decode())))
        return _decode_fields(ApiKey, _flatten(flat)) if flat else None

    async def list_orgs(self) -> list[str]:
        """Org ids, by SCAN: an admin listing, never on the hot path."""
        ids: set[str] = set()
        start = len(self._k.org_prefix)
        async for name in self._redis.scan_iter(match=self._k.org("*"), count=1000):
            rest = name.decode()[start:]
            if ":" not in rest:
                ids.add(rest)
        return sorted(ids)

    async def revoke_key(self, key_id: str, now_ms: int | None = None) -> bool:
        """Mark the key revoked; False if there is no such key. Other workers notice within
        ``cache_ttl_s``; this one at once."""
        key_hash = await self._redis.get(self._k.key_id(key_id))
        if key_hash is None:
            return False
        key_hash = key_hash.decode()
        revoked_at = now_ms if now_ms is not None else int(time.time() * 1000)
        await _aw(
            self._redis.hset(
                self._k.api_key(key_hash),
                mapping={"revoked": b"true", "revoked_at_ms": str(revoked_at).encode()},
            )
        )
        self._cache.pop(key_hash)
        return True

    async def list_keys(self, org_id: str) -> list[ApiKey]:
        hashes = await _aw(self._redis.smembers(self._k.org_keys(org_id)))
        async with self._redis.pipeline(transaction=False) as pipe:
            for h in sorted(hashes):
                pipe.hgetall(self._k.api_key(h.decode()))
            rows = await pipe.execute()
        keys = [_decode_fields(ApiKey, _flatten(row)) for row in rows if row]
        return sorted(keys, key=lambda k: (k.created_at_ms, k.key_id))


def _usage(d_tok: Any, d_cost: Any, m_tok: Any, m_cost: Any) -> Usage:
    return Usage(
        day_tokens=int(d_tok or 0),
        day_cost_usd=float(d_cost or 0),
        month_tokens=int(m_tok or 0),
        month_cost_usd=float(m_cost or 0),
    )


def _aw(value: Awaitable[_T] | _T) -> Awaitable[_T]:
    """redis-py types its asyncio client's commands as ``Awaitable[T] | T``; ours awaits."""
    return cast("Awaitable[_T]", value)


def _flatten(reply: Any) -> list[bytes]:
    """HGETALL through redis-py gives a dict; the Lua script gives a flat list."""
    if isinstance(reply, dict):
        return [item for pair in reply.items() for item in pair]
    return list(reply)
