"""How an upstream's failure becomes one of ours (docs/architecture.md §5), keeping its own words.

Two steps: ``upstream_error`` reads an error answer into the internal ``UpstreamError`` (what
adapters raise and dispatch decides on), and ``public_error`` makes the caller's error of the
one that ends dispatch, once. A 400/404/413/422 means the caller's request was wrong (bad
parameter, unknown model): the caller can fix it, so it is a 400 BAD_REQUEST. A timeout is 504
GATEWAY_TIMEOUT. Anything else (5xx, 429, 401/403 of our upstream key, no connection, an
unreadable answer) is the provider failing us: 502 PROVIDER_ERROR.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shared.errors import (
    BadRequestError,
    ClientError,
    GatewayTimeoutError,
    ProviderError,
    UpstreamError,
)

__all__ = ["CLIENT_MISTAKE_STATUSES", "MAX_ERROR_TEXT", "public_error", "upstream_error"]

CLIENT_MISTAKE_STATUSES = frozenset({400, 404, 413, 422})
MAX_ERROR_TEXT = 2000


def _provider_error(body: bytes) -> Any:
    """The provider's ``error`` object when it sent one, else its text (cut)."""
    try:
        parsed = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body[:MAX_ERROR_TEXT].decode("utf-8", "replace")
    if isinstance(parsed, dict) and "error" in parsed:
        return parsed["error"]
    return parsed


def _message_of(error: Any) -> str:
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:MAX_ERROR_TEXT]
    if isinstance(error, str):
        return error[:MAX_ERROR_TEXT]
    return ""


def upstream_error(provider: str, status: int, body: bytes) -> UpstreamError:
    error = _provider_error(body)
    said = _message_of(error) or f"status {status}"
    if status in CLIENT_MISTAKE_STATUSES:
        message = f"{provider} rejected the request: {said}"
    else:
        message = f"{provider} failed with status {status}: {said}"
    return UpstreamError(message, provider=provider, status=status, provider_error=error)


def public_error(exc: UpstreamError) -> ClientError:
    """The caller's error for an upstream failure (its ``details`` name the provider, and its
    status and own error when it answered)."""
    if exc.timed_out:
        return GatewayTimeoutError(exc.message, details={"provider": exc.provider})
    if exc.status is None:
        return ProviderError(exc.message, details={"provider": exc.provider})
    details = {
        "provider": exc.provider,
        "provider_status": exc.status,
        "provider_error": exc.provider_error,
    }
    if exc.status in CLIENT_MISTAKE_STATUSES:
        return BadRequestError(exc.message, details=details)
    return ProviderError(exc.message, details=details)
