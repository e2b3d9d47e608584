"""What the request record keeps of a request, and its spans (pure; the context is read into
the record by ``gateway.pipeline.record``, which hands these functions plain values).

Every free-text field is clipped (``TRUNCATED_MARK`` says where): bodies and template inputs
at ``body_limit`` bytes, names at ``NAME_MAX_CHARS``, error messages at ``MESSAGE_MAX_CHARS``
(issue 10: a 3 MiB model name went into the record whole). Headers are capped when parsed.

Spans get ids derived from the request id and the stage name (UUIDv5), so a span published twice
is the same span downstream, like its request record.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from gateway.domain import StageTiming, StreamObservation
from gateway.policy.cache import CacheOutcome
from gateway.policy.firewall import FirewallOutcome
from gateway.policy.headers import RequestMeta
from shared.errors import ClientError
from shared.records import SpanRecord

__all__ = [
    "MESSAGE_MAX_CHARS",
    "NAME_MAX_CHARS",
    "TRUNCATED_MARK",
    "build_spans",
    "cache_fields",
    "clip_body",
    "clip_inputs",
    "clip_text",
    "decoded_headers",
    "error_fields",
    "firewall_fields",
    "kept_bodies",
    "span_id",
    "stream_summary",
]

TRUNCATED_MARK = "…[truncated]"
NAME_MAX_CHARS = 256
MESSAGE_MAX_CHARS = 4096


def clip_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + TRUNCATED_MARK


def clip_inputs(inputs: dict[str, str], limit: int) -> dict[str, str]:
    """Template inputs within ``limit`` characters in all (names and values); the first ones
    kept whole, the one that crosses the limit cut, the rest left out (and marked)."""
    kept: dict[str, str] = {}
    left = limit
    for raw_name, value in inputs.items():
        if left <= 0:
            kept[TRUNCATED_MARK] = ""
            break
        name = clip_text(raw_name, NAME_MAX_CHARS)
        kept[name] = clip_text(value, max(0, left - len(name)))
        left -= len(name) + len(value)
    return kept


def clip_body(body: bytes, limit: int) -> str:
    """Body text for the record, cut at ``limit`` bytes (the proxied bytes are never cut)."""
    if len(body) <= limit:
        return body.decode("utf-8", "replace")
    return body[:limit].decode("utf-8", "ignore") + TRUNCATED_MARK


def stream_summary(request_id: str, stream: StreamObservation) -> bytes:
    """A streamed answer recorded as the chat.completion it adds up to."""
    usage = stream.usage
    return msgspec.json.encode(
        {
            "id": request_id,
            "object": "chat.completion",
            "model": stream.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(stream.content_parts)},
                    "finish_reason": stream.finish_reason or None,
                }
            ],
            "usage": None
            if usage is None
            else {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
        }
    )


def error_fields(error: ClientError | None, stream_error: str) -> tuple[str, str]:
    """(error code, message, clipped) of a request: its error, or what cut its stream short."""
    if error is not None:
        return error.code, clip_text(error.message, MESSAGE_MAX_CHARS)
    return "", clip_text(stream_error, MESSAGE_MAX_CHARS)


def kept_bodies(log_bodies: bool, meta: RequestMeta) -> tuple[bool, bool]:
    """(keep the request body, keep the response body): the key's body logging switch, then
    the caller's ``floopy-omit-request``/``floopy-omit-response``. Without the request body the
    template inputs go too (they are request body text)."""
    return log_bodies and not meta.omit_request, log_bodies and not meta.omit_response


def cache_fields(outcome: CacheOutcome) -> dict[str, Any]:
    if outcome.status is None:
        return {}
    return {
        "cache_status": outcome.status.value,
        "cache_tier": outcome.tier.value if outcome.tier else "",
        "cache_similarity": outcome.similarity,
        "cache_threshold": outcome.threshold,
        "cache_key_hash": outcome.keys.exact if outcome.keys else "",
        "cache_lookup_ms": dict(outcome.lookup_ms),
        "cache_error": outcome.error,
        "cost_saved_usd": outcome.hit.cost_usd if outcome.hit else None,
    }


def firewall_fields(outcome: FirewallOutcome) -> dict[str, Any]:
    return {
        "firewall_verdict": outcome.verdict,
        "firewall_score": outcome.score,
        "firewall_backend": outcome.backend,
        "firewall_model_ref": outcome.model_ref,
        "firewall_cached": outcome.source == "cache",
        "firewall_verdict_source": outcome.source,
        "firewall_categories": list(outcome.categories),
        "firewall_reason": outcome.reason,
        "firewall_latency_ms": outcome.latency_ms,
        "firewall_tokens": outcome.tokens,
        "firewall_cost_usd": outcome.cost_usd,
    }


def decoded_headers(raw: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[str, str]]:
    """ASGI header pairs as text (latin-1, as HTTP/1.1 defines them)."""
    for name, value in raw:
        yield name.decode("latin-1"), value.decode("latin-1")


def build_spans(
    request_id: str, org_id: str, created_at_ms: int, timings: Iterable[StageTiming]
) -> list[SpanRecord]:
    """One span per timing: the stages, the spans inside stages, then one per upstream attempt
    (ids from the attempt number, so each stays unique and stable)."""
    namespace = _namespace(request_id).bytes
    return [
        SpanRecord(
            span_id=span_id(namespace, _span_key(timing)),
            request_id=request_id,
            org_id=org_id,
            name=timing.name,
            created_at_ms=created_at_ms + int(timing.start_offset_ms),
            start_offset_ms=timing.start_offset_ms,
            duration_ms=timing.duration_ms,
            status=timing.status,
            attributes=dict(timing.attributes),
        )
        for timing in timings
    ]


_VARIANT = {c: "89ab"[int(c, 16) & 0x3] for c in "0123456789abcdef"}
"""The first hex digit of a UUID's clock_seq with the RFC 4122 variant bits set."""


def span_id(namespace: bytes, name: str) -> str:
    """``str(uuid.uuid5(UUID(bytes=namespace), name))`` without the ``UUID`` objects (ten
    spans a request): the same SHA-1, version and variant bits, and text."""
    h = hashlib.sha1(namespace + name.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def _span_key(timing: StageTiming) -> str:
    attempt = timing.attributes.get("attempt")
    return f"{timing.name}#{attempt}" if attempt else timing.name


def _namespace(request_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(request_id)
    except ValueError:
        return uuid.uuid5(uuid.NAMESPACE_OID, request_id)
