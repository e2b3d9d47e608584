"""The request record and its spans' entry, read off a finished request context.

This is the one place that knows both the context and the record's fields; what to keep, clip
and redact is decided by ``gateway.policy.recording`` and ``gateway.policy.redaction`` on the
plain values handed to them. Tokens and cost come settled (``gateway.policy.usage``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.domain import TokenUsage
from gateway.policy.recording import (
    NAME_MAX_CHARS,
    cache_fields,
    clip_body,
    clip_inputs,
    clip_text,
    error_fields,
    firewall_fields,
    kept_bodies,
)
from gateway.policy.redaction import recorded_request_headers, recorded_response_headers
from gateway.policy.usage import Settled, reported_usage
from shared.records import RequestRecord, RequestSpans

if TYPE_CHECKING:
    from gateway.context import RequestContext

__all__ = ["build_records"]


def build_records(
    ctx: RequestContext, end_ns: int, body_limit: int, settled: Settled | None = None
) -> tuple[RequestRecord, RequestSpans]:
    """``settled``: tokens and cost from ``gateway.policy.usage.settle_usage`` (without it,
    the provider's usage as reported and no cost)."""
    error_code, error_message = error_fields(ctx.error, ctx.stream_error)
    meta = ctx.meta
    usage = settled.usage if settled is not None else (reported_usage(ctx.answer) or TokenUsage())
    log_bodies = ctx.api_key is None or ctx.api_key.switches.log_bodies
    keep_request, keep_response = kept_bodies(log_bodies, meta)
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
        **cache_fields(ctx.cache),
        request_headers=recorded_request_headers(ctx.header_items),
        response_headers=recorded_response_headers(ctx.sent_headers),
        **firewall_fields(ctx.firewall),
    )
    spans = RequestSpans(  # the ingester makes the span records (``shared.records``)
        request_id=ctx.request_id,
        org_id=ctx.org_id,
        created_at_ms=ctx.created_at_ms,
        spans=[*ctx.timings, *ctx.child_spans, *ctx.attempts],
    )
    return record, spans


def _ttft_ms(ctx: RequestContext) -> float:
    if ctx.stream is None or not ctx.stream.first_chunk_ns:
        return 0.0
    return ctx.elapsed_ms(ctx.stream.first_chunk_ns)
