"""The ingester's hourly job against a Qdrant server: delete the semantic cache's expired points.

Qdrant has no TTL. Every cache point carries ``expires_at_ms`` (its answer's Redis TTL); this job
deletes, in every collection named ``<prefix>_cache_*``, the points past it. Without a Qdrant URL
there is nothing to do here: local mode lives inside each gateway worker, which prunes its own
vectors (``gateway.clients.response_cache``). A failed run is logged and the next hour redoes it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from qdrant_client import AsyncQdrantClient, models

from shared.settings import QdrantSettings

__all__ = ["cron_job", "prune_expired"]

log = logging.getLogger(__name__)

HOUR = 3600


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


def cron_job(settings: QdrantSettings) -> list[Any]:
    """The arq cron job (hourly at :41), or none without a Qdrant server."""
    if not settings.url:
        return []
    from arq import cron

    async def floopy_cache_prune(ctx: dict[str, Any]) -> None:
        client = AsyncQdrantClient(
            url=settings.url, api_key=settings.api_key or None, check_compatibility=False
        )
        try:
            names = await prune_expired(client, settings.collection_prefix, int(time.time() * 1000))
            log.info("cache prune: expired points deleted from %s", ", ".join(names) or "nothing")
        finally:
            await client.close()

    return [
        cron(
            floopy_cache_prune,
            name="floopy_cache_prune",
            minute=41,
            second=0,
            timeout=HOUR,
            keep_result=2 * HOUR,
        )
    ]
