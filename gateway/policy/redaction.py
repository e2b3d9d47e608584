"""What is never kept: credentials in recorded headers and in the admin audit log (pure).

One rule for both: a name is secret-like when a word of it (split on ``-``, ``_``, ``.`` and
case changes) is one of ``SECRET_WORDS`` (``Authorization``, ``Cookie``, ``client_secret``,
``X-Auth-Token``, ``key_hash``), or it is a key of a secret kind (``X-Api-Key``,
``api_key_encrypted``, ``master_key``) — but not ``key_id``. Floopy's own
``floopy-*`` request headers are kept whatever their name, since they are not credentials and the
console filters on them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

__all__ = [
    "REDACTED",
    "SECRET_WORDS",
    "is_secret_name",
    "recorded_request_headers",
    "recorded_response_headers",
    "redact",
]

REDACTED = "[redacted]"
SECRET_WORDS = frozenset(
    {
        "apikey",
        "authorization",
        "auth",
        "cookie",
        "setcookie",
        "credential",
        "credentials",
        "hash",
        "password",
        "passwd",
        "secret",
        "signature",
        "token",
    }
)
_KEY_KINDS = frozenset({"api", "access", "private", "secret", "encrypted", "master", "signing"})
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_FLOOPY = "floopy-"
_MAX_HEADERS = 100
_MAX_VALUE_CHARS = 1024


@lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Cached: every request records the same few header names (callers choose them, so the
    cache is bounded)."""
    words = {w.lower() for w in _WORD.findall(name)}
    if not words.isdisjoint(SECRET_WORDS):
        return True
    return "key" in words and (len(words) == 1 or not words.isdisjoint(_KEY_KINDS))


def _clip(value: str) -> str:
    return value if len(value) <= _MAX_VALUE_CHARS else value[:_MAX_VALUE_CHARS] + "…"


@lru_cache(maxsize=4096)
def recorded_name(raw_name: str) -> str | None:
    """The name a header is recorded under (lower case), None for one left out. Cached like
    ``is_secret_name``: a request's dozen headers cost a lookup each."""
    name = raw_name.lower()
    if not name.startswith(_FLOOPY) and is_secret_name(name):
        return None
    return name


def recorded_request_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Request headers for the record: names lower-cased, repeats joined with ``, ``, secret-like
    names left out except ``floopy-*`` (a session id is not a credential); at most 100 headers
    of at most 1,024 characters each."""
    kept: dict[str, str] = {}
    for raw_name, value in items:
        name = recorded_name(raw_name)
        if name is None:
            continue
        if name in kept:
            kept[name] = _clip(f"{kept[name]}, {value}")
        elif len(kept) < _MAX_HEADERS:
            kept[name] = _clip(value)
    return kept


def recorded_response_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Response headers for the record, with the same rule (a provider never sends a credential
    back, but a cookie it sets is one)."""
    return recorded_request_headers(headers.items())


def redact(value: Any) -> Any:
    """``value`` (JSON-like) with every secret-like field's value replaced by ``REDACTED``."""
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if is_secret_name(str(k)) and v not in ("", None) else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value
