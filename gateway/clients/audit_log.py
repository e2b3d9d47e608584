"""The admin audit log in Redis: who changed which setting, when, from what to what.

Invariants:
- ``<p>:audit:<org_id>`` is a list of JSON entries, newest first (``LPUSH``), capped at
  ``AUDIT_MAX_ENTRIES`` (``LTRIM`` in the same transaction); an entry goes to the log of every
  org it concerns (the org changed and the actor's org), so an org's admins see what an operator
  did to their org and the operator's org sees every change it made. Changes of providers and
  routes (no org's own) also go to ``<p>:audit:_gateway`` (``GATEWAY_LOG``), so one made with
  ``floopy-admin`` (no org) is logged too.
- Entries are redacted before they get here (``gateway.policy.redaction.redact``): no secret,
  key hash or provider credential is ever written.
- Writing happens after the change it describes succeeded; if the log write fails the change
  stands and the error reaches the caller (the admin API answers 5xx-free: see ``AdminService``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from redis.asyncio import Redis

from shared.redis_keys import RedisKeys

__all__ = ["AUDIT_MAX_ENTRIES", "GATEWAY_LOG", "AuditLog"]

AUDIT_MAX_ENTRIES = 10_000
GATEWAY_LOG = "_gateway"
"""The log of gateway-wide changes (providers, routes); not an org id (ids never start with _)."""


class AuditLog:
    def __init__(self, redis: Redis, *, prefix: str = "floopy") -> None:
        self._redis = redis
        self._k = RedisKeys(prefix)

    def _list(self, org_id: str) -> str:
        return self._k.audit(org_id)

    async def append(self, entry: dict[str, Any], org_ids: Iterable[str]) -> None:
        raw = msgspec.json.encode(entry)
        async with self._redis.pipeline(transaction=True) as pipe:
            for org_id in sorted(set(org_ids)):
                pipe.lpush(self._list(org_id), raw)
                pipe.ltrim(self._list(org_id), 0, AUDIT_MAX_ENTRIES - 1)
            await pipe.execute()

    async def entries(self, org_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` entries of the org's log, newest first."""
        raw = await self._redis.lrange(self._list(org_id), 0, max(0, limit - 1))  # type: ignore[misc]
        return [msgspec.json.decode(item) for item in raw]
