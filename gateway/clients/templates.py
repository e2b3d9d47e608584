"""Prompt templates in Redis, versioned, per org, with an in-process cache for the hot path.

Invariants:
- ``<p>:tpl:<org_id>:<template_id>`` is a hash: ``latest`` → the newest version number,
  ``v<n>`` → version n (JSON). Versions are immutable once written; ``put`` adds version
  ``latest + 1`` in one script, so two writers never share a number.
- A lookup costs at most one round trip (one script reads ``latest`` and that version). A pinned
  version (``id@3``) is cached for the worker's lifetime, since it never changes; "latest" is
  cached for ``cache_ttl_s``, so a new version is picked up within that many seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis

from gateway.clients.expiring_cache import ExpiringCache
from gateway.policy.templates import Template, TemplateMessage, check_template_id
from shared.errors import BadRequestError
from shared.redis_keys import RedisKeys, check_id, is_id

__all__ = ["TemplateStore"]

_GET_LUA = """
local version = ARGV[1]
if version == '' then
  version = redis.call('HGET', KEYS[1], 'latest')
  if not version then return false end
end
return redis.call('HGET', KEYS[1], 'v' .. version)
"""

_PUT_LUA = """
local version = redis.call('HINCRBY', KEYS[1], 'latest', 1)
local body = string.gsub(ARGV[1], '"version":0', '"version":' .. version, 1)
redis.call('HSET', KEYS[1], 'v' .. version, body)
return body
"""

_CACHE_MAX = 10_000
_decode = msgspec.json.Decoder(Template).decode


class TemplateStore:
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
        self._cache: ExpiringCache[tuple[str, str, int | None], Template] = ExpiringCache(
            cache_ttl_s, max_entries=_CACHE_MAX, clock=clock
        )
        self._get = redis.register_script(_GET_LUA)
        self._put = redis.register_script(_PUT_LUA)

    def _key(self, org_id: str, template_id: str) -> str:
        """Both ids checked: neither holds ``:``, so one org's names never reach another's."""
        return self._k.template(check_id("org", org_id), check_template_id(template_id))

    async def get(self, org_id: str, template_id: str, version: int | None = None) -> Template:
        """The template, or BadRequestError naming what was not found."""
        cache_key = (org_id, template_id, version)
        cached = self._cache.lookup(cache_key)
        if cached is not None and cached.fresh:
            return cached.value
        raw: Any = await self._get(
            keys=[self._key(org_id, template_id)], args=["" if version is None else version]
        )
        if raw is None:
            which = f"{template_id!r}" + ("" if version is None else f" version {version}")
            raise BadRequestError(f"unknown prompt template {which}")
        template = _decode(raw)
        # a pinned version never changes; the latest may, within the TTL
        self._cache.put(cache_key, template, ttl_s=math.inf if version is not None else None)
        return template

    async def put(
        self,
        org_id: str,
        template_id: str,
        messages: Sequence[TemplateMessage],
        *,
        only_if_changed: bool = False,
    ) -> Template:
        """Add a version. ``only_if_changed``: return the latest instead when it has the same
        messages (re-applying a config seed must not pile up identical versions)."""
        check_template_id(template_id)
        if not messages:
            raise BadRequestError("a prompt template needs at least one message")
        if only_if_changed:
            try:
                latest = await self.get(org_id, template_id)
            except BadRequestError:
                latest = None
            if latest is not None and latest.messages == tuple(messages):
                return latest
        draft = Template(
            template_id=template_id,
            version=0,
            messages=tuple(messages),
            created_at_ms=int(time.time() * 1000),
        )
        raw: Any = await self._put(
            keys=[self._key(org_id, template_id)], args=[msgspec.json.encode(draft)]
        )
        template = _decode(raw)
        self._cache.pop((org_id, template_id, None))
        return template

    async def versions(self, org_id: str, template_id: str) -> list[Template]:
        flat = await self._redis.hgetall(self._key(org_id, template_id))  # type: ignore[misc]
        found = [_decode(v) for k, v in flat.items() if k.startswith(b"v")]
        return sorted(found, key=lambda t: t.version)

    async def list_ids(self, org_id: str) -> list[str]:
        """Only valid ids: a name with ``:`` under this org's prefix (written before ids were
        checked) belongs to another org whose id starts with this one's."""
        start = len(self._k.template(check_id("org", org_id), ""))
        names = [
            name.decode()[start:]
            async for name in self._redis.scan_iter(match=self._k.template(org_id, "*"), count=1000)
        ]
        return sorted(n for n in names if is_id(n))
