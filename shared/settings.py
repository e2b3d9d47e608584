"""Settings groups used by both processes. Each process has its own ``BaseSettings`` with its own
env prefix (``gateway.settings``, ``ingester.settings``) built once at start-up and passed down;
nothing here reads the environment by itself.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["ClickHouseSettings", "QdrantSettings", "RedisSettings"]


class RedisSettings(BaseModel):
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "floopy"
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
