"""Floopy request headers (docs/architecture.md §2) → who the request is for and how to treat it.

Rules, checked before anything is sent upstream (any breach is a 400 BAD_REQUEST naming the
header): no control characters anywhere; ids and the session path are printable ASCII; the
session name and property values may be any UTF-8 text (headers arrive as Latin-1 strings,
so they are re-read as UTF-8); lengths are capped; a header given twice is ambiguous and refused;
property names are ``[A-Za-z0-9_.-]``; switches are ``true``/``false``. Unknown ``floopy-*``
headers are ignored so newer clients work against older gateways.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import msgspec

from gateway.policy.cache import CacheControls, parse_max_age, parse_seed, parse_threshold
from shared.errors import BadRequestError

__all__ = [
    "HEADER_NAMES",
    "MAX_ID_CHARS",
    "MAX_PROPERTIES",
    "MAX_TEXT_CHARS",
    "PROPERTY_PREFIX",
    "RequestMeta",
    "parse_floopy_headers",
]

PROPERTY_PREFIX = "floopy-property-"
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 1024
MAX_PROPERTY_NAME_CHARS = 64
MAX_PROPERTIES = 50

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_PROPERTY_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


class RequestMeta(msgspec.Struct, frozen=True):
    user_id: str = ""
    session_id: str = ""
    session_name: str = ""
    session_path: str = ""
    properties: dict[str, str] = msgspec.field(default_factory=dict)
    cache_enabled: bool = True
    cache_max_age_s: int | None = None
    cache_seed: str = ""
    cache_semantic_threshold: float | None = None
    firewall_enabled: bool = True
    ratelimit_policy: str = ""
    prompt_id: str = ""
    omit_request: bool = False
    """``floopy-omit-request: true``: keep metrics and metadata, never store the request body."""
    omit_response: bool = False

    def cache_controls(self) -> CacheControls:
        return CacheControls(
            self.cache_enabled,
            self.cache_max_age_s,
            self.cache_seed,
            self.cache_semantic_threshold,
        )


def _ascii_id(name: str, value: str, limit: int = MAX_ID_CHARS) -> str:
    if _CONTROL.search(value):
        raise BadRequestError(f"header {name} contains control characters")
    if not _PRINTABLE_ASCII.fullmatch(value):
        raise BadRequestError(f"header {name} must be printable ASCII")
    if len(value) > limit:
        raise BadRequestError(f"header {name} is longer than {limit} characters")
    return value


def _utf8_text(name: str, value: str, limit: int = MAX_TEXT_CHARS) -> str:
    try:
        text = value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise BadRequestError(f"header {name} is not valid UTF-8") from None
    if _CONTROL.search(text):
        raise BadRequestError(f"header {name} contains control characters")
    if len(text) > limit:
        raise BadRequestError(f"header {name} is longer than {limit} characters")
    return text


def _switch(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise BadRequestError(f"header {name} must be true or false")


def _session_path(name: str, value: str) -> str:
    path = _ascii_id(name, value, MAX_TEXT_CHARS)
    if path and not path.startswith("/"):
        raise BadRequestError(f"header {name} must start with '/' (e.g. /parent/child)")
    return path


def _property(name: str, value: str) -> tuple[str, str]:
    key = name[len(PROPERTY_PREFIX) :]
    if not key or len(key) > MAX_PROPERTY_NAME_CHARS or not _PROPERTY_NAME.fullmatch(key):
        raise BadRequestError(
            f"header {name}: property names are 1-{MAX_PROPERTY_NAME_CHARS} characters "
            "of A-Z, a-z, 0-9, '_', '.', '-'"
        )
    return key.lower(), _utf8_text(name, value)


def parse_floopy_headers(items: Iterable[tuple[str, str]]) -> RequestMeta:
    """Read every ``floopy-*`` header; ``items`` are (lower-cased name, value) pairs as sent."""
    seen: set[str] = set()
    values: dict[str, object] = {}
    properties: dict[str, str] = {}
    for raw_name, value in items:
        name = raw_name.lower()
        if not name.startswith("floopy-"):
            continue
        if name in seen:
            raise BadRequestError(f"header {name} is given more than once")
        seen.add(name)
        if name.startswith(PROPERTY_PREFIX):
            key, text = _property(name, value)
            properties[key] = text
            if len(properties) > MAX_PROPERTIES:
                raise BadRequestError(f"more than {MAX_PROPERTIES} floopy-property-* headers")
            continue
        parser = _PARSERS.get(name)
        if parser is not None:
            field_name, parse = parser
            values[field_name] = parse(name, value)
    return RequestMeta(properties=properties, **values)  # type: ignore[arg-type]


_PARSERS = {
    "floopy-user-id": ("user_id", _ascii_id),
    "floopy-session-id": ("session_id", _ascii_id),
    "floopy-session-name": ("session_name", _utf8_text),
    "floopy-session-path": ("session_path", _session_path),
    "floopy-cache-enabled": ("cache_enabled", _switch),
    "floopy-cache-max-age": ("cache_max_age_s", parse_max_age),
    "floopy-cache-seed": ("cache_seed", parse_seed),
    "floopy-cache-semantic-threshold": ("cache_semantic_threshold", parse_threshold),
    "floopy-llm-security-enabled": ("firewall_enabled", _switch),
    "floopy-ratelimit-policy": ("ratelimit_policy", _ascii_id),
    "floopy-prompt-id": ("prompt_id", _ascii_id),
    "floopy-omit-request": ("omit_request", _switch),
    "floopy-omit-response": ("omit_response", _switch),
}

HEADER_NAMES = tuple(_PARSERS)
"""The ``floopy-*`` headers read besides ``floopy-property-*`` (documented in the API spec)."""
