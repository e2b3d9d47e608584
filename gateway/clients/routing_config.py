"""Providers and routing rules kept in Redis by the admin API, the CLI and the config seed.

Invariants:
- ``<p>:providers`` is a hash: provider name → its settings as JSON, the credential only as
  ``api_key_encrypted`` (Fernet) or ``api_key_env`` (a variable name), never in plaintext.
- ``<p>:routes`` is a hash: model → JSON list of targets (``"provider"`` or ``"provider/model"``).
- Gateway workers read both once, at start-up, and merge them over their settings
  (``gateway.admin.seed.merge_routing``); a change takes effect at the next restart.
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis.asyncio import Redis

from shared.errors import BadRequestError
from shared.redis_keys import RedisKeys

__all__ = ["RoutingConfigStore"]

_FORBIDDEN_FIELDS = ("api_key",)


class RoutingConfigStore:
    def __init__(self, redis: Redis, *, prefix: str = "floopy") -> None:
        self._redis = redis
        keys = RedisKeys(prefix)
        self._providers = keys.providers
        self._routes = keys.routes

    async def put_provider(self, provider: dict[str, Any]) -> None:
        name = provider.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequestError("a provider needs a name")
        leaked = [f for f in _FORBIDDEN_FIELDS if provider.get(f)]
        if leaked:
            raise BadRequestError(
                "store provider credentials as api_key_encrypted or api_key_env, not api_key"
            )
        await self._redis.hset(self._providers, name, msgspec.json.encode(provider).decode())  # type: ignore[misc]

    async def delete_provider(self, name: str) -> bool:
        return bool(await self._redis.hdel(self._providers, name))  # type: ignore[misc]

    async def providers(self) -> list[dict[str, Any]]:
        raw = await self._redis.hgetall(self._providers)  # type: ignore[misc]
        return [msgspec.json.decode(raw[k]) for k in sorted(raw)]

    async def put_route(self, model: str, targets: list[str]) -> None:
        if not model or not targets or not all(isinstance(t, str) and t for t in targets):
            raise BadRequestError("a route needs a model and a non-empty list of targets")
        await self._redis.hset(self._routes, model, msgspec.json.encode(targets).decode())  # type: ignore[misc]

    async def delete_route(self, model: str) -> bool:
        return bool(await self._redis.hdel(self._routes, model))  # type: ignore[misc]

    async def routes(self) -> dict[str, list[str]]:
        raw = await self._redis.hgetall(self._routes)  # type: ignore[misc]
        return {k.decode(): msgspec.json.decode(v) for k, v in sorted(raw.items())}
