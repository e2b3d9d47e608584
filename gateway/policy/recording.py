"""What the request record keeps of a request (pure; the context is read into the record by
``gateway.pipeline.record``, which hands these functions plain values).

Every free-text field is clipped (``TRUNCATED_MARK`` says where): bodies and template inputs
at ``body_limit`` bytes, names at ``NAME_MAX_CHARS``, error messages at ``MESSAGE_MAX_CHARS``
(issue 10: a 3 MiB model name went into the record whole). Headers are capped when parsed.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.domain import StreamObservation
from gateway.policy.cache import CacheOutcome
from gateway.policy.firewall import FirewallOutcome
from gateway.policy.headers import RequestMeta
from shared.errors import ClientError

__all__ = [
    "MESSAGE_MAX_CHARS",
    "NAME_MAX_CHARS",
    "TRUNCATED_MARK",
    "cache_fields",
    "clip_body",
    "clip_inputs",
    "clip_text",
    "error_fields",
    "firewall_fields",
    "kept_bodies",
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
