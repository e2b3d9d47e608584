"""Providers and routing rules kept in Redis by the admin API, the CLI and the config seed.

Invariants:
- ``<p>:providers`` is a hash: provider name → its settings as JSON, the credential only as
  ``api_key_encrypted`` (Fernet) or ``api_key_env`` (a variable name), never in plaintext.
- ``<p>:routes`` is a hash: model → JSON list of targets (``"provider"`` or ``"provider/model"``).
- ``<p>:routing:version`` is incremented by every write (in the same transaction), so a
  worker learns of a change by reading one integer (``version``); gateway workers poll it every
  ``routing_refresh_s`` and rebuild their providers and routes when it moved
  (``gateway.routing_watch``), merged over their settings
  (``gateway.routing_checks.merge_routing``).
- Every write is checked first (``gateway.routing_checks``: a provider's fields and types, an
  http(s) URL, a variable name, no plaintext credential; a route's targets), whoever writes:
  admin API, ``floopy-admin``, the config seed. Whether it routes with the workers' settings
  is checked by the admin API before it calls the store.
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis.asyncio import Redis

from gateway.routing_checks import check_provider, check_route
from shared.redis_keys import RedisKeys

__all__ = ["RoutingConfigStore"]


class RoutingConfigStore:
    def __init__(self, redis: Redis, *, prefix: str = "floopy") -> None:
        self._redis = redis
        keys = RedisKeys(prefix)
        self._providers = keys.providers
        self._routes = keys.routes
        self._version = keys.routing_version

    async def version(self) -> int:
        """How many writes the stored providers and routes have had (0: never written)."""
        raw = await self._redis.get(self._version)
        return int(raw or 0)

    async def _write(self, table: str, field: str, value: str | None) -> int:
        """HSET (or HDEL when ``value`` is None) and bump the version, atomically."""
        async with self._redis.pipeline(transaction=True) as pipe:
            if value is None:
                pipe.hdel(table, field)
            else:
                pipe.hset(table, field, value)
            pipe.incr(self._version)
            changed, _ = await pipe.execute()
        return int(changed)

    async def put_provider(self, provider: dict[str, Any]) -> None:
        check_provider(provider)
        name = str(provider["name"])
        await self._write(self._providers, name, msgspec.json.encode(provider).decode())

    async def delete_provider(self, name: str) -> bool:
        return bool(await self._write(self._providers, name, None))

    async def providers(self) -> list[dict[str, Any]]:
        raw = await self._redis.hgetall(self._providers)  # type: ignore[misc]
        return [msgspec.json.decode(raw[k]) for k in sorted(raw)]

    async def put_route(self, model: str, targets: list[str]) -> None:
        check_route(model, targets)
        await self._write(self._routes, model, msgspec.json.encode(targets).decode())

    async def delete_route(self, model: str) -> bool:
        return bool(await self._write(self._routes, model, None))

    async def routes(self) -> dict[str, list[str]]:
        raw = await self._redis.hgetall(self._routes)  # type: ignore[misc]
        return {k.decode(): msgspec.json.decode(v) for k, v in sorted(raw.items())}
