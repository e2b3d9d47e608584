"""Orgs and API keys as admins write them (admin API, ``floopy-admin``, the config seed): never
on a request's path.

Invariants:
- Key names come from ``shared.redis_keys``; org and key ids are checked against its charset
  when written, so no id reaches into another's keys.
- Only the SHA-256 of a key is stored: ``<p>:key:<hash>`` is a hash whose fields are the
  ``ApiKey`` fields, each JSON-encoded (``stored_fields``); ``<p>:keyid:<key_id>`` → hash lets
  admins revoke by id; ``<p>:org:<org_id>`` holds the ``Org`` the same way,
  ``<p>:org:<org_id>:keys`` the key hashes.
- A key's hash is rewritten whole in one step (a Lua script): a reader never sees it missing,
  since a cached "no such key" would lock the key out for the authenticator's cache TTL.
- An org's settings sections (``cache``, ``firewall``) are fields of its hash written by their
  own routes; an org put keeps them unless told to write them (the seed).
- Every write that changes what a secret authenticates as tells this worker's authenticator
  (``forget``); other workers follow within their cache TTL.
- Redis Cluster: writes are ordered pipelines instead of transactions (redis-py's cluster
  pipeline), the index entries written after the hash they point to.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from gateway.clients.key_auth import KeyAuthenticator
from gateway.clients.stored_fields import aw, decode_fields, encode_fields, flatten
from gateway.policy.cache import CacheSettings
from gateway.policy.firewall import FirewallConfig
from gateway.policy.keys import (
    ApiKey,
    KeyLimits,
    KeySwitches,
    NewKey,
    Org,
    Permission,
    generate_key,
)
from shared.redis_client import is_cluster
from shared.redis_keys import RedisKeys, check_id
from shared.streams import retention_key

__all__ = ["ORG_SETTINGS", "AdminStore"]

_REPLACE_HASH_LUA = """
redis.call('DEL', KEYS[1])
return redis.call('HSET', KEYS[1], unpack(ARGV))
"""

_SET_ORG_FIELD_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

ORG_SETTINGS = ("cache",)
"""Org fields written by their own route (``PUT /admin/orgs/{org}/cache``), kept by org puts."""


class AdminStore:
    """Orgs and keys: create, read, update, revoke, and an org's cache and firewall sections."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "floopy",
        authenticator: KeyAuthenticator | None = None,
    ) -> None:
        """``authenticator``: this worker's, told of each key write so it takes effect here at
        once (none in ``floopy-admin``, which authenticates nothing)."""
        self._redis = redis
        self._k = RedisKeys(prefix, cluster=is_cluster(redis))
        self._p = prefix
        self._authenticator = authenticator
        self._set_org_field = redis.register_script(_SET_ORG_FIELD_LUA)

    def _forget(self, key_hash: str) -> None:
        if self._authenticator is not None:
            self._authenticator.forget(key_hash)

    # -- orgs -------------------------------------------------------------------------------

    async def put_org(self, org: Org, *, with_settings: bool = False) -> None:
        """Write the org's name, plan and rate limit; its feature settings (``cache``) are
        kept as stored unless ``with_settings`` (they have their own admin route)."""
        check_id("org", org.org_id)
        fields = encode_fields(org)
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
        flat = await aw(self._redis.hgetall(self._k.org(org_id)))
        return decode_fields(Org, flatten(flat)) if flat else None

    # -- keys -------------------------------------------------------------------------------

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
            pipe.hset(self._k.api_key(new.key_hash), mapping=encode_fields(key))
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
            _replace_hash(pipe, self._k.api_key(key.key_hash), encode_fields(key))
            pipe.set(self._k.key_id(key.key_id), key.key_hash)
            pipe.sadd(self._k.org_keys(key.org_id), key.key_hash)
            await pipe.execute()
        self._forget(key.key_hash)
        return key

    async def get_key(self, key_id: str) -> ApiKey | None:
        key_hash = await self._redis.get(self._k.key_id(key_id))
        if key_hash is None:
            return None
        flat = await aw(self._redis.hgetall(self._k.api_key(key_hash.decode())))
        return decode_fields(ApiKey, flatten(flat)) if flat else None

    async def revoke_key(self, key_id: str, now_ms: int | None = None) -> bool:
        """Mark the key revoked; False if there is no such key. Other workers notice within
        their authenticator's cache TTL; this one at once."""
        key_hash = await self._redis.get(self._k.key_id(key_id))
        if key_hash is None:
            return False
        key_hash = key_hash.decode()
        revoked_at = now_ms if now_ms is not None else int(time.time() * 1000)
        await aw(
            self._redis.hset(
                self._k.api_key(key_hash),
                mapping={"revoked": b"true", "revoked_at_ms": str(revoked_at).encode()},
            )
        )
        self._forget(key_hash)
        return True

    async def list_keys(self, org_id: str) -> list[ApiKey]:
        hashes = await aw(self._redis.smembers(self._k.org_keys(org_id)))
        async with self._redis.pipeline(transaction=False) as pipe:
            for h in sorted(hashes):
                pipe.hgetall(self._k.api_key(h.decode()))
            rows = await pipe.execute()
        keys = [decode_fields(ApiKey, flatten(row)) for row in rows if row]
        return sorted(keys, key=lambda k: (k.created_at_ms, k.key_id))


def _replace_hash(pipe: Pipeline, key: str, fields: dict[str, bytes]) -> None:
    flat: list[Any] = [item for pair in fields.items() for item in pair]
    pipe.eval(_REPLACE_HASH_LUA, 1, key, *flat)
