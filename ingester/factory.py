"""The one place the ingester's connections and delivery parts are built from its settings: the
worker (``ingester.worker``) and the on-call CLI (``ingester.cli``) both take them from here,
so a part is configured the same way wherever it runs.

Invariants:
- Nothing here connects: clients connect on first use, so building never fails on a server that
  is down (the worker starts and spools; the CLI reports reachability itself).
- Each call returns a new object; the owner closes it. A ``Delivery`` (one ClickHouse
  connection) is used from one thread at a time, so every consumer and replay watcher gets
  its own.
"""

from __future__ import annotations

from redis.asyncio import Redis

from ingester.delivery import Delivery
from ingester.replay import Replayer
from ingester.settings import IngesterSettings
from ingester.sink import ClickHouseSink
from shared.redis_client import open_redis
from shared.spool.writer import SpoolWriter
from shared.streams import Sink

__all__ = ["clickhouse_sink", "delivery", "redis_client", "replayer", "spool_writer"]


def redis_client(settings: IngesterSettings) -> Redis:
    """A client whose socket timeout outlasts a blocked XREADGROUP."""
    return open_redis(settings.redis, extra_timeout_s=settings.read_block_ms / 1000)


def clickhouse_sink(settings: IngesterSettings, timeout_s: float | None = None) -> ClickHouseSink:
    """The ClickHouse sink; ``timeout_s`` bounds connecting and each answer (a status probe)."""
    ch = settings.clickhouse
    if timeout_s is not None:
        ch = ch.model_copy(
            update={"connect_timeout_s": timeout_s, "send_receive_timeout_s": timeout_s}
        )
    return ClickHouseSink(ch)


def delivery(settings: IngesterSettings) -> Delivery:
    return Delivery(
        settings.clickhouse,
        settings.dead_letter_dir,
        attempts=settings.insert_attempts,
        backoff_s=settings.insert_backoff_s,
    )


def replayer(settings: IngesterSettings, sink: Sink, through: Delivery) -> Replayer:
    """The replayer of ``sink``'s spool, inserting ``through`` the given delivery."""
    return Replayer(
        settings.spool_dir,
        sink,
        through,
        batch_records=settings.replay_batch_records,
        insert_records=settings.replay_insert_records,
        stale_after_s=settings.lock_stale_after_s,
    )


def spool_writer(settings: IngesterSettings, sink: Sink) -> SpoolWriter:
    return SpoolWriter(
        settings.spool_dir,
        sink,
        cap_bytes=settings.spool_cap_bytes,
        generations=settings.spool_generations,
    )
