"""The worker's scheduled jobs, all here beside ``ingester.worker`` (which hands them to arq):
rollups every minute, raw-log retention hourly at :17:30, and, with a Qdrant server, the
semantic cache's expired points hourly at :41. What each job does lives in its own module
(``ingester.rollups``, ``ingester.retention``, ``ingester.cache_prune``); this one says when
it runs and with what.

Invariants:
- One run per tick across replicas: arq enqueues a tick under a job id unique to it
  (``<name>:<tick ms>``) and refuses an id whose job or result key exists. The result is kept
  for an hour or more (arq's cron default keeps none): without it a replica whose loop lagged
  past the end of a short tick would find neither key and run the tick again.
- A failed tick raises (arq logs it) and the next tick redoes the work; two overlapping runs
  (a tick and a CLI rebuild) are still correct (see ``ingester.rollups``).
- Blocking ClickHouse work runs in a thread; the org → retention map is read from the streams'
  Redis (the gateway writes it there), not from arq's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from arq import cron
from arq.cron import CronJob
from qdrant_client import AsyncQdrantClient

from ingester.cache_prune import prune_expired
from ingester.retention import Retention
from ingester.rollups import RollupReport, Rollups, run_on_shards
from ingester.schema.topology import shard_settings
from ingester.settings import IngesterSettings
from shared.settings import ClickHouseSettings, QdrantSettings
from shared.streams import reply_text, retention_key
from shared.tables import HOUR

__all__ = ["analytics_jobs", "cache_prune_jobs", "jobs"]

log = logging.getLogger(__name__)


def jobs(settings: IngesterSettings) -> list[CronJob]:
    """Every cron job of a worker with ``settings``."""
    analytics = analytics_jobs(
        settings.clickhouse,
        default_retention_days=settings.retention_default_days,
        overlap_s=settings.rollup_overlap_s,
        key_prefix=settings.redis.key_prefix,
    )
    return [*analytics, *cache_prune_jobs(settings.qdrant)]


def analytics_jobs(
    clickhouse: ClickHouseSettings,
    *,
    default_retention_days: int = 30,
    overlap_s: int = 600,
    key_prefix: str = "floopy",
) -> list[CronJob]:
    """Rollups every minute, retention hourly (at :17:30)."""

    def rollup_tick() -> RollupReport:
        return run_on_shards(
            clickhouse,
            Rollups.run_changed,
            default_retention_days=default_retention_days,
            overlap_s=overlap_s,
        )

    def retention_tick(plans: dict[str, int]) -> object:
        reports = []
        for shard in shard_settings(clickhouse):  # each shard holds its own rows and plans
            retention = Retention(shard, default_days=default_retention_days)
            try:
                retention.ensure_table()
                changed = retention.sync_days(plans)
                if changed:
                    log.info("retention: plans changed for %s", ", ".join(changed))
                reports.append(retention.enforce())
            finally:
                retention.close()
        return reports

    async def floopy_rollups(ctx: dict[str, Any]) -> None:
        report = await asyncio.to_thread(rollup_tick)
        log.info("rollups: %d hour(s) of %d org(s) recomputed", report.hours, len(report.orgs))

    async def floopy_retention(ctx: dict[str, Any]) -> None:
        # the org map lives with the keys (the streams' Redis, maybe a cluster), not in arq's
        runtime = ctx.get("runtime")
        client = runtime.redis if runtime is not None else ctx["redis"]
        flat = await client.hgetall(retention_key(key_prefix))
        plans = {reply_text(org): int(days) for org, days in flat.items()}
        report = await asyncio.to_thread(retention_tick, plans)
        log.info("retention: %s", report)

    return [
        cron(floopy_rollups, name="floopy_rollups", second=0, timeout=600, keep_result=HOUR),
        cron(
            floopy_retention,
            name="floopy_retention",
            minute=17,
            second=30,
            timeout=3600,
            keep_result=2 * HOUR,
        ),
    ]


def cache_prune_jobs(settings: QdrantSettings) -> list[CronJob]:
    """The semantic cache's pruning (hourly at :41), or none without a Qdrant server: local
    mode lives inside each gateway worker, which prunes its own vectors."""
    if not settings.url:
        return []

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
