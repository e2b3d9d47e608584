"""The ingester's settings: one ``BaseSettings`` read from ``FLOOPY_INGESTER_*`` once at start-up
(worker or CLI) and passed down; nested groups use ``__`` (``FLOOPY_INGESTER_CLICKHOUSE__PORT``).

The one relation between settings that matters for correctness: a live consumer must ack (or
give up on) every entry it holds before another replica may claim it, or two replicas would
process the same entries concurrently forever. An entry is held for at most
``batch_age_s + read_block_s + 2 * insert_budget_s`` (waiting for the batch to fill, one blocked
read, the insert of the batch still in flight before it, then its own insert with retries), so
``claim_min_idle_s`` must be well above that; the validator asks for twice that sum.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.settings import ClickHouseSettings, QdrantSettings, RedisSettings

__all__ = ["IngesterSettings", "default_consumer_name"]

CLAIM_SAFETY_FACTOR = 2.0
"""``claim_min_idle_s`` must be this many times the longest a live consumer holds an entry."""


def default_consumer_name() -> str:
    """Host, pid and a random suffix: unique per process, readable in ``XINFO CONSUMERS``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class IngesterSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLOOPY_INGESTER_", env_nested_delimiter="__", extra="ignore"
    )

    redis: RedisSettings = Field(default_factory=RedisSettings)
    """Streams and the org retention map: a single node or a Redis Cluster."""
    arq_redis_url: str | None = None
    """arq's own queue (cron ticks and their one-run-per-tick locks) on a single Redis node:
    arq does not speak Redis Cluster. Unset: ``redis.url`` (required with ``redis.cluster``)."""
    shards: list[int] | None = None
    """The stream shards this replica consumes (each sink); unset: all ``redis.stream_shards``.
    Every shard needs at least one replica consuming it."""
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    """The gateways' Qdrant server, for the hourly prune of expired cache points (none in local
    mode: each gateway worker prunes its own)."""

    spool_dir: Path = Path("var/spool")
    spool_cap_bytes: int = Field(default=100 * 2**20, gt=0)
    spool_generations: int = Field(default=3, ge=1)
    dead_letter_dir: Path = Path("var/dead-letter")

    batch_records: int = Field(default=5000, gt=0)
    batch_age_s: float = Field(default=1.0, gt=0)
    insert_records: int = Field(default=25_000, gt=0)
    """Under a backlog (batches flushed full), up to this many records of a stream go to
    ClickHouse in one INSERT, a batch at a time, for at most ``batch_age_s``: ClickHouse writes
    them as one part (``ingester.consume``). The consumer keeps their payloads until the
    insert is confirmed (~3.5 KB per record)."""
    read_block_ms: int = Field(default=1000, gt=0)
    insert_attempts: int = Field(default=3, ge=1)
    insert_backoff_s: float = Field(default=0.2, ge=0)
    error_backoff_s: float = Field(default=1.0, gt=0)  # after a Redis error or a failed spool write

    claim_min_idle_s: float = Field(default=300.0, gt=0)
    claim_interval_s: float = Field(default=10.0, gt=0)
    consumer_forget_after_s: float = Field(default=3600.0, gt=0)
    trim_interval_s: float = Field(default=5.0, gt=0)

    replay_check_interval_s: float = Field(default=5.0, gt=0)
    replay_batch_records: int = Field(default=5000, gt=0)
    replay_insert_records: int = Field(default=50_000, gt=0)
    """Records per INSERT of a replay, sent ``replay_batch_records`` at a time: ClickHouse
    holds up to this many (and at most its ``min_insert_block_size_bytes``, 256 MiB) and
    writes them as one part (``ingester.replay``)."""
    lock_stale_after_s: float = Field(default=30.0, gt=0)

    retention_default_days: int = Field(default=30, ge=1)
    """Raw-log retention of an org without a row in ``org_settings`` (``ingester.retention``)."""
    rollup_overlap_s: int = Field(default=600, ge=0)
    """Each rollup run re-reads rows ingested this long before its watermark (late inserts)."""

    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Serve ``GET /metrics`` (Prometheus text format) on this port; unset: no endpoint."""
    metrics_host: str = "0.0.0.0"
    metrics_interval_s: float = Field(default=5.0, gt=0)
    """How often the stream and spool gauges are read."""

    consumer_name: str = Field(default_factory=default_consumer_name, min_length=1)
    log_level: str = "INFO"

    @property
    def insert_budget_s(self) -> float:
        """Longest one ``Delivery.deliver`` may take: each attempt may wait for the connect and
        the send/receive timeouts, and the backoff grows at most exponentially between them."""
        per_attempt = self.clickhouse.connect_timeout_s + self.clickhouse.send_receive_timeout_s
        backoff = self.insert_backoff_s * 2.0**self.insert_attempts
        return self.insert_attempts * per_attempt + backoff

    @property
    def max_hold_s(self) -> float:
        """Longest a live consumer holds an entry unacknowledged (see the module docstring):
        its batch's age, the insert before it (answered, and if that failed its batches again:
        ``insert_budget_s``), then its own insert's age (``insert_records``) and the same."""
        age = self.batch_age_s + self.read_block_ms / 1000
        one_attempt = self.clickhouse.connect_timeout_s + self.clickhouse.send_receive_timeout_s
        return 2 * age + 2 * (one_attempt + self.insert_budget_s)

    @property
    def arq_url(self) -> str:
        return self.arq_redis_url or self.redis.url

    @property
    def my_shards(self) -> list[int]:
        return sorted(set(self.shards)) if self.shards else list(range(self.redis.stream_shards))

    @model_validator(mode="after")
    def _shards_and_arq(self) -> Self:
        if self.redis.cluster and not self.arq_redis_url:
            raise ValueError(
                "redis.cluster needs arq_redis_url (a single Redis node for arq's cron queue)"
            )
        bad = [s for s in self.shards or [] if not 0 <= s < self.redis.stream_shards]
        if bad:
            raise ValueError(f"shards {bad} outside 0..{self.redis.stream_shards - 1}")
        return self

    @model_validator(mode="after")
    def _claim_after_hold(self) -> Self:
        needed = CLAIM_SAFETY_FACTOR * self.max_hold_s
        if self.claim_min_idle_s < needed:
            raise ValueError(
                f"claim_min_idle_s={self.claim_min_idle_s} must be at least {needed:.1f}: "
                f"{CLAIM_SAFETY_FACTOR}x the longest a live consumer holds an entry "
                f"({self.max_hold_s:.1f}s: two batch ages and two inserts, each with its "
                f"retries, budget {self.insert_budget_s:.1f}s), or live consumers' batches get "
                "claimed"
            )
        return self
