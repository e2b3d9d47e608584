"""The gateway's settings: one ``BaseSettings`` with the ``FLOOPY_GATEWAY_`` prefix, nested groups
joined with ``__`` (``FLOOPY_GATEWAY_REDIS__URL``), built once per worker by ``app_factory`` and
passed down; nothing else reads the environment."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.settings import ClickHouseSettings, RedisSettings

__all__ = ["ApiKeyEntry", "GatewaySettings", "ProviderSettings", "PublisherSettings"]


class ProviderSettings(BaseModel):
    """One OpenAI-compatible upstream (the first cut routes everything to it)."""

    name: str = "openai"
    base_url: str = "https://api.openai.com/v1"
    api_key: SecretStr = SecretStr("")
    timeout_s: float = Field(default=120.0, gt=0)
    """Longest wait for the upstream's answer (the whole body when not streaming; each read
    when streaming, so a long stream that keeps sending is not cut)."""
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=512, ge=1)


class ApiKeyEntry(BaseModel):
    org_id: str
    key_id: str


class PublisherSettings(BaseModel):
    """The in-memory buffer between requests and Redis streams, per worker."""

    buffer_records: int = Field(default=200_000, ge=1)
    """Records (a request record or a span each) held while Redis is slow or down; beyond
    that new records are dropped and counted."""
    batch_records: int = Field(default=1_000, ge=1)
    linger_s: float = Field(default=0.002, ge=0)
    """After waking, wait this long for more records so one pipeline carries many."""
    retry_max_s: float = Field(default=2.0, gt=0)
    flush_deadline_s: float = Field(default=5.0, ge=0)
    """On shutdown, keep flushing for at most this long."""


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLOOPY_GATEWAY_", env_nested_delimiter="__", extra="ignore"
    )

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = Field(default=1, ge=1)
    log_level: str = "info"
    access_log: bool = True

    redis: RedisSettings = RedisSettings()
    provider: ProviderSettings = ProviderSettings()
    api_keys: dict[str, ApiKeyEntry] = Field(default_factory=dict)
    """First cut: a static table Floopy key → (org, key id); the next issue moves keys to Redis."""

    max_body_bytes: int = Field(default=4 * 2**20, ge=1)
    record_body_max_bytes: int = Field(default=256 * 2**10, ge=0)
    """Bodies longer than this are cut in the record (never in the proxied traffic)."""
    publisher: PublisherSettings = PublisherSettings()

    clickhouse: ClickHouseSettings = ClickHouseSettings()
    """Read by the console (read API and dashboard pages); the hot path never touches it."""
    console_pool_size: int = Field(default=4, ge=1)
    """ClickHouse connections (and worker threads) the console may use at once per worker."""
