"""How an upstream's error answer becomes one of ours (docs/architecture.md §5), keeping its own
words.

A 400/404/413/422 means the caller's request was wrong (bad parameter, unknown model): the caller
can fix it, so it is a 400 BAD_REQUEST. Anything else (5xx, 429, 401/403 of our upstream key) is
the provider failing us: 502 PROVIDER_ERROR. Timeouts are mapped by the client (504).
"""

from __future__ import annotations

from typing import Any

import msgspec

from shared.errors import BadRequestError, ClientError, ProviderError

__all__ = ["CLIENT_MISTAKE_STATUSES", "MAX_ERROR_TEXT", "upstream_error"]

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


def upstream_error(provider: str, status: int, body: bytes) -> ClientError:
    error = _provider_error(body)
    details = {"provider": provider, "provider_status": status, "provider_error": error}
    said = _message_of(error) or f"status {status}"
    if status in CLIENT_MISTAKE_STATUSES:
        return BadRequestError(f"{provider} rejected the request: {said}", details=details)
    return ProviderError(f"{provider} failed with status {status}: {said}", details=details)
