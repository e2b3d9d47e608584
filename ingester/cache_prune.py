"""The ingester's hourly job against a Qdrant server: delete the semantic cache's expired points.

Qdrant has no TTL. Every cache point carries ``expires_at_ms`` (its answer's Redis TTL); the job
(``ingester.cron``) deletes, in every collection named ``<prefix>_cache_*``, the points past it.
Without a Qdrant URL there is nothing to do here: local mode lives inside each gateway worker,
which prunes its own vectors (``gateway.clients.response_cache``). A failed run is logged and
the next hour redoes it.
"""

from __future__ import annotations

import logging

from qdrant_client import AsyncQdrantClient, models

__all__ = ["prune_expired"]

log = logging.getLogger(__name__)


async def prune_expired(client: AsyncQdrantClient, prefix: str, now_ms: int) -> list[str]:
    """Delete expired points from every cache collection; returns the collections pruned."""
    expired = models.FieldCondition(key="expires_at_ms", range=models.Range(lt=float(now_ms)))
    selector = models.FilterSelector(filter=models.Filter(must=[expired]))
    names = [
        c.name
        for c in (await client.get_collections()).collections
        if c.name.startswith(f"{prefix}_cache_")
    ]
    for name in names:
        await client.delete(name, points_selector=selector)
    return names
