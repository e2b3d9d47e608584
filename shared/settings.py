"""Settings groups used by both processes. Each process has its own ``BaseSettings`` with its own
env prefix (``gateway.settings``, ``ingester.settings``) built once at start-up and passed down;
nothing here reads the environment by itself.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["ClickHouseSettings", "QdrantSettings", "RedisSettings"]


class RedisSettings(BaseModel):
    url: str = "redis://127.0.0.1:6379/0"
    """One node, or with ``cluster`` any node of a Redis Cluster (the rest are discovered)."""
    cluster: bool = False
    """Talk to a Redis Cluster (redis-py's cluster client): keys a script or a transaction
    uses together carry the org as a hash tag (``shared.redis_client.org_tag``)."""
    key_prefix: str = "floopy"
    stream_shards: int = Field(default=1, ge=1, le=64)
    """Streams per sink. The gateway spreads records over them by request id; 1 keeps the
    single-stream names; on a cluster each shard can live on another master. The gateway and
    the ingesters must agree on it (raising it is safe: shard 0 keeps today's stream)."""
    socket_timeout_s: float = Field(default=2.0, gt=0)
    connect_timeout_s: float = Field(default=1.0, gt=0)


class ClickHouseSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 9000
    database: str = "floopy"
    user: str = "default"
    password: str = ""
    connect_timeout_s: float = Field(default=2.0, gt=0)
    send_receive_timeout_s: float = Field(default=10.0, gt=0)
    cluster: str = ""
    """A cluster of the server's ``remote_servers`` (``floopy-ingester migrate --cluster``):
    tables are then ``Distributed`` over per-shard ``<name>_local`` tables, inserts wait for
    every shard (``insert_distributed_sync``), and rollups and retention run on each shard.
    Readers use the same table names either way, so the gateway's console needs no setting."""
    bulk_writer: bool = True
    """Inserts pack each column whole (``ingester.native``: the same bytes, a fraction of the
    ingester's CPU); false uses clickhouse-driver's own column writer (kept as a fallback and to
    measure the difference: ``bench.ingest --driver-writer``)."""


class QdrantSettings(BaseModel):
    """Where the semantic cache and the firewall's verdict cache live.

    With ``url`` set, a Qdrant server (shared by every worker and process). Without it,
    qdrant-client's local mode inside each process: in memory (``path`` empty) or in a
    directory (``path``), which one process at a time may open. Local mode is not shared across
    processes, so each gateway worker has its own vectors (see README, "Qdrant")."""

    url: str = ""
    api_key: str = ""
    path: str = ""
    collection_prefix: str = "floopy"
    timeout_s: float = Field(default=2.0, gt=0)
