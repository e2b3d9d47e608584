"""Gauges of the ingester's surroundings for ``/metrics``: each stream shard's length, lag and
pending count, each sink's spool bytes and rotation drops. Read every ``interval_s`` by one
task; a Redis error leaves the last values and is logged and counted (``errors``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ingester.metrics import (
    SPOOL_BYTES,
    SPOOL_DROPPED_BYTES,
    SPOOL_DROPPED_RECORDS,
    STREAM_LAG,
    STREAM_LENGTH,
    STREAM_PENDING,
    ConsumerCounter,
    Counters,
)
from ingester.replay import pending_files
from ingester.settings import IngesterSettings
from shared.spool.writer import read_dropped
from shared.streams import CONSUMER_GROUP, Sink, reply_text, stream_key

__all__ = ["observe_forever", "observe_once"]

log = logging.getLogger(__name__)


async def observe_once(redis: Redis, settings: IngesterSettings, counters: Counters) -> None:
    prefix = settings.redis.key_prefix
    for sink in Sink:
        for shard in range(settings.redis.stream_shards):
            try:
                await _observe_stream(redis, stream_key(sink, prefix, shard), sink, shard)
            except RedisError as exc:
                counters.inc(sink, ConsumerCounter.ERRORS)
                log.warning("metrics: stream %s #%d unreadable: %s", sink, shard, exc)
        await asyncio.to_thread(_observe_spool, settings, sink)


async def _observe_stream(redis: Redis, key: str, sink: Sink, shard: int) -> None:
    labels = (sink.value, str(shard))
    STREAM_LENGTH.labels(*labels).set(int(await redis.xlen(key)))
    if not await redis.exists(key):
        return
    groups: list[dict[str, Any]] = await redis.xinfo_groups(key)
    for group in groups:
        if reply_text(group["name"]) == CONSUMER_GROUP:
            STREAM_PENDING.labels(*labels).set(int(group["pending"]))
            if group.get("lag") is not None:
                STREAM_LAG.labels(*labels).set(int(group["lag"]))


def _observe_spool(settings: IngesterSettings, sink: Sink) -> None:
    files = [p for p in pending_files(settings.spool_dir, sink) if p.is_file()]
    SPOOL_BYTES.labels(sink.value).set(sum(p.stat().st_size for p in files))
    dropped = read_dropped(settings.spool_dir, sink)
    SPOOL_DROPPED_RECORDS.labels(sink.value).set(dropped.records)
    SPOOL_DROPPED_BYTES.labels(sink.value).set(dropped.bytes)


async def observe_forever(
    redis: Redis, settings: IngesterSettings, counters: Counters, stopping: asyncio.Event
) -> None:
    while not stopping.is_set():
        try:
            await observe_once(redis, settings, counters)
        except OSError as exc:  # the spool directory vanished, a file rotated away mid-read
            log.warning("metrics: spool unreadable: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), settings.metrics_interval_s)
