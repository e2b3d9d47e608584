"""``GET /health/providers`` (public): each provider's circuit-breaker state and its failures
within the breaker's window, as every worker sees them (the state lives in Redis).

Public because load balancers and status pages read it without a key; it shows names, kinds and
states only, never a URL or a credential. If Redis cannot answer, the states are ``unknown``
and the status ``degraded`` (requests are still admitted then: the breakers fail open).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from litestar import get
from litestar.di import NamedDependency
from redis.exceptions import RedisError

from gateway.generation import Generation
from shared.metrics import CounterSet

__all__ = ["provider_health"]

log = logging.getLogger(__name__)

_TIMEOUT_S = 0.5


@get("/health/providers")
async def provider_health(
    generation: NamedDependency[Generation], counters: NamedDependency[CounterSet]
) -> dict[str, Any]:
    kinds = {p.name: p.kind for p in generation.settings.provider_list()}
    upstreams = generation.upstreams
    names = list(upstreams.providers)
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            rows = await upstreams.breakers.snapshot(names)
    except (RedisError, OSError) as exc:  # TimeoutError is an OSError
        counters.inc("unexpected")
        log.warning("provider health: breaker states unavailable: %s: %s", type(exc).__name__, exc)
        return {
            "status": "degraded",
            "providers": [{"name": n, "kind": kinds.get(n, ""), "state": "unknown"} for n in names],
        }
    providers = [
        {
            "name": row.provider,
            "kind": kinds.get(row.provider, ""),
            "state": row.state.value,
            "recent_failures": row.recent_failures,
            "opened_at": row.opened_at or None,
            "retry_at": row.retry_at or None,
        }
        for row in rows
    ]
    degraded = any(p["state"] != "closed" for p in providers)
    return {"status": "degraded" if degraded else "ok", "providers": providers}
