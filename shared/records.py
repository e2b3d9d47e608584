"""The gateway → ingester contract: one record per request, one span per stage, one event per
circuit-breaker state change.

A request's spans travel as one entry (``RequestSpans``: the request's identity once, then its
``StageTiming`` values); the ingester makes the ``SpanRecord`` rows of it (``span_records``),
ids included, so the gateway's hot path builds and hashes nothing per span.

Invariants:
- ``SCHEMA_VERSION`` rises whenever a field is added, renamed or changes meaning. The ingester
  accepts the current and the previous version (``shared.codec`` upgrades the previous one),
  because gateway and ingester deploy separately and run different versions during a rollout.
- Every record has a stable identity (``request_id``; ``span_id``; ``event_id``) chosen by the
  gateway, so a record delivered twice is recognisably the same record downstream.
- Timestamps are integer milliseconds since the Unix epoch (UTC); durations are float ms.
- Empty string means "not set" for optional text, so the ClickHouse core schema needs no
  Nullable columns except where zero is a real value (cost, firewall score).
"""

from __future__ import annotations

import hashlib
import uuid

import msgspec

__all__ = [
    "PREVIOUS_SCHEMA_VERSION",
    "SCHEMA_VERSION",
    "BreakerEventRecord",
    "RequestRecord",
    "RequestSpans",
    "SpanRecord",
    "StageTiming",
    "span_id",
    "span_records",
]

SCHEMA_VERSION = 3
"""v3: the cache's and the firewall's outcome in full (similarity, threshold, key hash, lookup
time per tier, cost saved; verdict source, categories, the classifier call's latency, tokens and
cost, the reason for a skip or an error) and the request's and response's headers.
v2: custom properties as an object (``properties``); v1 sent them JSON-encoded in
``properties_json`` and had no ``cached_prompt_tokens``/``tokens_estimated``."""

PREVIOUS_SCHEMA_VERSION = 2


class RequestRecord(msgspec.Struct, kw_only=True, omit_defaults=False):
    """Everything known about one request through the gateway, whatever its outcome."""

    schema_version: int = SCHEMA_VERSION
    request_id: str
    org_id: str
    api_key_id: str
    created_at_ms: int

    endpoint: str = "/v1/chat/completions"
    stream: bool = False
    model_requested: str = ""
    model_used: str = ""
    provider: str = ""
    status_code: int = 0
    error_code: str = ""
    error_message: str = ""

    request_body: str = ""
    response_body: str = ""
    bodies_redacted: bool = False

    latency_ms: float = 0.0
    time_to_first_token_ms: float = 0.0
    stage_latency_ms: dict[str, float] = msgspec.field(default_factory=dict)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_prompt_tokens: int = 0
    tokens_estimated: bool = False
    cost_usd: float | None = None

    cache_status: str = ""
    """HIT, MISS, BYPASS (``Floopy-Cache-Enabled: false``) or DISABLED (key or org switch)."""
    cache_tier: str = ""
    """On a hit: exact, semantic or advanced."""
    cache_similarity: float | None = None
    cache_threshold: float | None = None
    """The semantic threshold in force for this request (after any header raised it)."""
    cache_key_hash: str = ""
    """The exact tier's key (a hash of the canonical request; never the prompt)."""
    cache_lookup_ms: dict[str, float] = msgspec.field(default_factory=dict)
    """Lookup time per tier looked up, in the order they ran."""
    cache_error: str = ""
    """Why the cache failed open (a store or the embedder unreachable); empty otherwise."""
    cost_saved_usd: float | None = None
    """On a hit: what the stored answer cost when it was a miss."""

    firewall_verdict: str = ""
    firewall_score: float | None = None
    firewall_backend: str = ""
    firewall_model_ref: str = ""
    firewall_cached: bool = False
    """The verdict came from the verdict cache (``firewall_verdict_source == "cache"``)."""
    firewall_verdict_source: str = ""
    """cache or classifier; empty when the firewall did not screen the request."""
    firewall_categories: list[str] = msgspec.field(default_factory=list)
    firewall_reason: str = ""
    """Why it was skipped (header, key switch, org) or what failed (timeout, malformed answer)."""
    firewall_latency_ms: float = 0.0
    firewall_tokens: int = 0
    firewall_cost_usd: float | None = None

    user_id: str = ""
    session_id: str = ""
    session_name: str = ""
    session_path: str = ""
    properties: dict[str, str] = msgspec.field(default_factory=dict)

    prompt_id: str = ""
    prompt_version: int = 0
    prompt_inputs: dict[str, str] = msgspec.field(default_factory=dict)

    providers_tried: list[str] = msgspec.field(default_factory=list)
    retries: int = 0

    request_headers: dict[str, str] = msgspec.field(default_factory=dict)
    """As sent, names lower-cased, minus ``Authorization`` and anything named like a secret."""
    response_headers: dict[str, str] = msgspec.field(default_factory=dict)


class SpanRecord(msgspec.Struct, kw_only=True):
    """One pipeline stage of one request: where the time went."""

    schema_version: int = SCHEMA_VERSION
    span_id: str
    request_id: str
    org_id: str
    name: str
    created_at_ms: int
    start_offset_ms: float
    duration_ms: float
    status: str = "ok"
    attributes: dict[str, str] = msgspec.field(default_factory=dict)


class StageTiming(msgspec.Struct, omit_defaults=True):
    """One span of a request as the gateway times it: a stage, a span inside a stage, or an
    upstream attempt (``attributes["attempt"]`` keeps attempts' ids apart). Mutable: a stream's
    dispatch span is stretched to its last chunk."""

    name: str
    start_offset_ms: float
    duration_ms: float
    status: str = "ok"
    attributes: dict[str, str] = msgspec.field(default_factory=dict)


class RequestSpans(msgspec.Struct, kw_only=True):
    """The spans of one request, as one entry of the spans sink (``shared.codec.encode_spans``).

    Why not the span records themselves: ten records a request meant ten structs, ten SHA-1s
    and the request's identity written ten times, on the gateway's hot path. The ingester
    derives the same records (``span_records``), whose ids depend only on this entry, so an
    entry delivered twice still makes the same rows."""

    schema_version: int = SCHEMA_VERSION
    request_id: str
    org_id: str
    created_at_ms: int
    spans: list[StageTiming]


_VARIANT = {c: "89ab"[int(c, 16) & 0x3] for c in "0123456789abcdef"}
"""The first hex digit of a UUID's clock_seq with the RFC 4122 variant bits set."""


def span_id(namespace: bytes, name: str) -> str:
    """``str(uuid.uuid5(UUID(bytes=namespace), name))`` without the ``UUID`` objects: the same
    SHA-1, version and variant bits, and text."""
    h = hashlib.sha1(namespace + name.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def span_records(entry: RequestSpans) -> list[SpanRecord]:
    """One record per timing, its id a UUIDv5 of the request id and the span's name (and
    attempt number), so it is stable however often the entry is delivered."""
    namespace = _namespace(entry.request_id).bytes
    return [
        SpanRecord(
            span_id=span_id(namespace, _span_key(timing)),
            request_id=entry.request_id,
            org_id=entry.org_id,
            name=timing.name,
            created_at_ms=entry.created_at_ms + int(timing.start_offset_ms),
            start_offset_ms=timing.start_offset_ms,
            duration_ms=timing.duration_ms,
            status=timing.status,
            attributes=timing.attributes,
        )
        for timing in entry.spans
    ]


def _span_key(timing: StageTiming) -> str:
    attempt = timing.attributes.get("attempt")
    return f"{timing.name}#{attempt}" if attempt else timing.name


def _namespace(request_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(request_id)
    except ValueError:
        return uuid.uuid5(uuid.NAMESPACE_OID, request_id)


class BreakerEventRecord(msgspec.Struct, kw_only=True):
    """A circuit breaker of one provider changed state."""

    schema_version: int = SCHEMA_VERSION
    event_id: str
    provider: str
    created_at_ms: int
    from_state: str
    to_state: str
    failure_count: int = 0
    reason: str = ""
