"""The read API's query inputs, validated, and the cursor codec. Pure: no I/O.

Every filter becomes a ``%(name)s`` parameter of the SQL built in ``gateway.console.queries``;
nothing a caller sends is ever pasted into SQL text. Sort columns and bucket sizes are chosen
from fixed tables here, so an unknown value is a 400, not an injection.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from typing import Any

from shared.errors import BadRequestError

__all__ = [
    "MAX_LIMIT",
    "SORTS",
    "Page",
    "RequestFilters",
    "TimeRange",
    "decode_cursor",
    "encode_cursor",
    "parse_bucket",
    "parse_properties",
]

MAX_LIMIT = 200
MAX_POINTS = 2000
HOUR = 3600
DAY = 86400

SORTS: dict[str, str] = {
    "time": "created_at_ms",
    "latency": "latency_ms",
    "cost": "ifNull(cost_usd, 0)",
    "tokens": "total_tokens",
}
"""Sort name → SQL expression; the cursor holds the last row's value of it and its id."""


@dataclass(frozen=True)
class TimeRange:
    """``[start, end)`` in unix milliseconds."""

    start_ms: int
    end_ms: int

    def __post_init__(self) -> None:
        if self.end_ms <= self.start_ms:
            raise BadRequestError("`end` must be after `start`")

    @property
    def start_s(self) -> int:
        return self.start_ms // 1000

    @property
    def end_s(self) -> int:
        return -(-self.end_ms // 1000)

    def aligned(self, step: int) -> tuple[int, int]:
        """Seconds, widened outward to whole buckets of ``step``."""
        return self.start_s - self.start_s % step, -(-self.end_s // step) * step


@dataclass(frozen=True)
class Page:
    limit: int = 50
    cursor: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise BadRequestError(f"`limit` must be between 1 and {MAX_LIMIT}")


@dataclass(frozen=True)
class RequestFilters:
    """Filters of the Requests list; empty means "any"."""

    models: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    status_codes: tuple[int, ...] = ()
    error_codes: tuple[str, ...] = ()
    cache_statuses: tuple[str, ...] = ()
    cache_tiers: tuple[str, ...] = ()
    firewall_verdicts: tuple[str, ...] = ()
    firewall_sources: tuple[str, ...] = ()
    user_id: str = ""
    session_id: str = ""
    properties: tuple[tuple[str, str], ...] = ()
    min_latency_ms: float | None = None
    max_latency_ms: float | None = None
    min_cost_usd: float | None = None
    max_cost_usd: float | None = None
    search: str = ""
    sort: str = "time"
    descending: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sort not in SORTS:
            raise BadRequestError(f"`sort` must be one of {', '.join(SORTS)}")


def parse_properties(values: list[str] | None) -> tuple[tuple[str, str], ...]:
    """``key:value`` (or ``key=value``) pairs; every pair must match (AND)."""
    pairs = []
    for item in values or []:
        sep = ":" if ":" in item else "="
        key, found, value = item.partition(sep)
        if not found or not key:
            raise BadRequestError(f"property filter {item!r} is not key:value")
        pairs.append((key, value))
    return tuple(pairs)


def parse_bucket(bucket: str, span_s: int) -> int:
    """``1h``, ``6h``, ``1d``, ``7d`` or seconds → seconds, a whole number of hours, and few
    enough buckets over the range to draw."""
    text = bucket.strip().lower()
    units = {"h": HOUR, "d": DAY}
    try:
        step = int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text)
    except (ValueError, KeyError):
        raise BadRequestError("`bucket` must look like 1h, 6h, 1d or a number of seconds") from None
    if step <= 0 or step % HOUR:
        raise BadRequestError("`bucket` must be a whole number of hours")
    if span_s // step > MAX_POINTS:
        raise BadRequestError(f"more than {MAX_POINTS} buckets: use a larger `bucket`")
    return step


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


_INT64 = 2**63 - 1


def _cursor_value(value: Any) -> bool:
    """What a cursor of ours holds: finite numbers within ClickHouse's Int64, and strings."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -_INT64 <= value <= _INT64
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= 256


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_cursor(cursor: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw, parse_constant=_no_constant)
    except (binascii.Error, ValueError, RecursionError):
        raise BadRequestError("`cursor` is not a cursor this API returned") from None
    if not isinstance(values, list) or not all(_cursor_value(v) for v in values):
        raise BadRequestError("`cursor` is not a cursor this API returned")
    return values
