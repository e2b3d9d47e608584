"""The request record and its spans, built from a finished request context (pure).

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

from gateway.clients.providers.base import TokenUsage, UpstreamStream
from gateway.context import RequestContext, StageTiming
from gateway.policy.redaction import recorded_request_headers, recorded_response_headers
from gateway.policy.usage import Settled, reported_usage
from shared.records import RequestRecord, SpanRecord

__all__ = [
    "MESSAGE_MAX_CHARS",
    "NAME_MAX_CHARS",
    "TRUNCATED_MARK",
    "build_records",
    "clip_body",
    "clip_inputs",
    "clip_text",
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


def stream_summary(request_id: str, stream: UpstreamStream) -> bytes:
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


def _ttft_ms(ctx: RequestContext) -> float:
    if ctx.stream is None or not ctx.stream.first_chunk_ns:
        return 0.0
    return ctx.elapsed_ms(ctx.stream.first_chunk_ns)


def _error_fields(ctx: RequestContext) -> tuple[str, str]:
    if ctx.error is not None:
        return ctx.error.code, ctx.error.message
    if ctx.stream_error:
        return "", ctx.stream_error
    return "", ""


def build_records(
    ctx: RequestContext, end_ns: int, body_limit: int, settled: Settled | None = None
) -> tuple[RequestRecord, list[SpanRecord]]:
    """``settled``: tokens and cost from ``gateway.policy.usage.settle_usage`` (without it,
    the provider's usage as reported and no cost)."""
    error_code, error_message = _error_fields(ctx)
    error_message = clip_text(error_message, MESSAGE_MAX_CHARS)
    meta = ctx.meta
    usage = settled.usage if settled is not None else (reported_usage(ctx) or TokenUsage())
    log_bodies = ctx.api_key is None or ctx.api_key.switches.log_bodies
    keep_request = log_bodies and not meta.omit_request
    keep_response = log_bodies and not meta.omit_response
    record = RequestRecord(
        request_id=ctx.request_id,
        org_id=ctx.org_id,
        api_key_id=ctx.api_key_id,
        created_at_ms=ctx.created_at_ms,
        stream=bool(ctx.chat and ctx.chat.stream),
        model_requested=clip_text(ctx.model_requested, NAME_MAX_CHARS),
        model_used=clip_text(ctx.model_used, NAME_MAX_CHARS),
        provider=ctx.provider_name,
        status_code=ctx.status_code,
        error_code=error_code,
        error_message=error_message,
        # with the key's body logging off (or floopy-omit-*), no body and no template inputs
        # (they are request body text)
        request_body=clip_body(ctx.body, body_limit) if keep_request else "",
        response_body=clip_body(ctx.response_body, body_limit) if keep_response else "",
        bodies_redacted=not (keep_request and keep_response),
        latency_ms=ctx.elapsed_ms(end_ns),
        time_to_first_token_ms=_ttft_ms(ctx),
        stage_latency_ms={t.name: t.duration_ms for t in ctx.timings},
        user_id=meta.user_id,
        session_id=meta.session_id,
        session_name=meta.session_name,
        session_path=meta.session_path,
        properties=meta.properties,
        prompt_id=ctx.prompt_id or meta.prompt_id,
        prompt_version=ctx.prompt_version,
        prompt_inputs=clip_inputs(ctx.prompt_inputs, body_limit) if keep_request else {},
        providers_tried=list(ctx.providers_tried),
        retries=ctx.retries,
        tokens_estimated=settled.estimated if settled is not None else False,
        cost_usd=settled.cost_usd if settled is not None else None,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens,
        endpoint=ctx.endpoint,
        **_cache_fields(ctx),
        request_headers=recorded_request_headers(_decoded(ctx.raw_headers)),
        response_headers=recorded_response_headers(ctx.sent_headers),
        **_firewall_fields(ctx),
    )
    return record, build_spans(ctx)


def _cache_fields(ctx: RequestContext) -> dict[str, Any]:
    outcome = ctx.cache
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


def _firewall_fields(ctx: RequestContext) -> dict[str, Any]:
    outcome = ctx.firewall
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


def _decoded(raw: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[str, str]]:
    for name, value in raw:
        yield name.decode("latin-1"), value.decode("latin-1")


def build_spans(ctx: RequestContext) -> list[SpanRecord]:
    """One span per stage, the spans inside stages, then one per upstream attempt (ids from
    the attempt number, so each stays unique and stable)."""
    namespace = _namespace(ctx.request_id).bytes
    return [
        SpanRecord(
            span_id=span_id(namespace, _span_key(timing)),
            request_id=ctx.request_id,
            org_id=ctx.org_id,
            name=timing.name,
            created_at_ms=ctx.created_at_ms + int(timing.start_offset_ms),
            start_offset_ms=timing.start_offset_ms,
            duration_ms=timing.duration_ms,
            status=timing.status,
            attributes=dict(timing.attributes),
        )
        for timing in (*ctx.timings, *ctx.child_spans, *ctx.attempts)
    ]


def span_id(namespace: bytes, name: str) -> str:
    """``str(uuid.uuid5(UUID(bytes=namespace), name))`` without the ``UUID`` objects (ten
    spans a request): the same SHA-1, version and variant bits, and text."""
    digest = bytearray(hashlib.sha1(namespace + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _span_key(timing: StageTiming) -> str:
    attempt = timing.attributes.get("attempt")
    return f"{timing.name}#{attempt}" if attempt else timing.name


def _namespace(request_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(request_id)
    except ValueError:
        return uuid.uuid5(uuid.NAMESPACE_OID, request_id)
