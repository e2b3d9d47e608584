"""Rate-limit policies, GCRA arithmetic and the ``RateLimit*`` header values (pure: no I/O).

The policy header
-----------------
``floopy-ratelimit-policy: <quota>;w=<window seconds>[;u=<unit>][;s=<segment>]``, in the spirit
of the IETF RateLimit-Policy draft, e.g. ``1000;w=60;u=request;s=user``:

- ``quota``: a positive integer for ``u=request`` and ``u=token``; a positive decimal in USD for
  ``u=cost`` (``5.50;w=86400;u=cost``).
- ``w``: the window in whole seconds, 1 … 31 days. Required.
- ``u``: ``request`` (default), ``token`` or ``cost``.
- ``s``: ``global`` (default: one bucket per org), ``user`` (one bucket per ``floopy-user-id``)
  or ``property:<name>`` (one bucket per value of ``floopy-property-<name>``). Requests that lack
  the segment's value share one bucket.

Parameters may come in any order, each at most once; anything else is a 400 naming the problem.

The arithmetic
--------------
GCRA (the generic cell rate algorithm) with a burst of the whole quota: a bucket is its
theoretical arrival time (TAT); a request of ``cost`` units moves it ``cost * window / quota``
later and is allowed while ``TAT - now ≤ window``. To stay exact at window edges (quota 7 per
60 s must allow exactly 7, not 6 because ``7 * 60/7`` rounds above 60) TAT is kept as integers:
``GcraState(at, debt)`` with ``debt = (TAT - at) * quota`` in clock ticks * quota. The clock tick
is 1 ms, coarsened to 10 ms / 100 ms / 1 s only when ``window * quota`` would leave the 2**50
range where Lua's doubles (the Redis script mirrors :func:`gcra`) are exact integers.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from shared.errors import BadRequestError
from shared.redis_keys import RedisKeys

__all__ = [
    "COST_UNITS_PER_USD",
    "GcraDecision",
    "GcraState",
    "RateLimitPolicy",
    "Segment",
    "Unit",
    "bucket_key",
    "cost_units",
    "gcra",
    "parse_policy",
    "ratelimit_header",
    "ratelimit_policy_header",
    "retry_after_header",
]

COST_UNITS_PER_USD = 100_000
"""``u=cost`` counts thousandths of a cent, so a cheap request still costs at least one unit."""

_MAX_WINDOW_S = 31 * 86_400
_EXACT_LIMIT = 2**50
_TICKS_MS = (1, 10, 100, 1000)
_PROPERTY_NAME = re.compile(r"^[a-z0-9_.-]{1,64}$")
_DECIMAL = re.compile(r"^\d+(\.\d+)?$")
_E = TypeVar("_E", bound=StrEnum)


class Unit(StrEnum):
    REQUEST = "request"
    TOKEN = "token"
    COST = "cost"


class Segment(StrEnum):
    GLOBAL = "global"
    USER = "user"
    PROPERTY = "property"


@dataclass(frozen=True)
class RateLimitPolicy:
    """``quota`` is in the unit's integer measure (cost: ``COST_UNITS_PER_USD`` per dollar)."""

    quota: int
    window_s: int
    unit: Unit = Unit.REQUEST
    segment: Segment = Segment.GLOBAL
    property_name: str = ""

    def __post_init__(self) -> None:
        if self.quota <= 0:
            raise BadRequestError("rate-limit quota must be positive")
        if not 1 <= self.window_s <= _MAX_WINDOW_S:
            raise BadRequestError(f"rate-limit window must be 1..{_MAX_WINDOW_S} seconds")
        if self.tick_ms is None:
            raise BadRequestError("rate-limit quota * window is too large")

    @property
    def tick_ms(self) -> int | None:
        """The finest clock tick that keeps ``window * quota`` exact; None if none does."""
        for tick in _TICKS_MS:
            if (self.window_s * 1000 // tick) * self.quota * 4 <= _EXACT_LIMIT:
                return tick
        return None

    @property
    def window_ticks(self) -> int:
        return self.window_s * 1000 // (self.tick_ms or 1000)

    def render(self) -> str:
        """The canonical header form; ``parse_policy(p.render()) == p``."""
        quota = _format_usd(self.quota) if self.unit is Unit.COST else str(self.quota)
        segment = self.segment.value
        if self.segment is Segment.PROPERTY:
            segment = f"property:{self.property_name}"
        return f"{quota};w={self.window_s};u={self.unit.value};s={segment}"


def _format_usd(units: int) -> str:
    whole, frac = divmod(units, COST_UNITS_PER_USD)
    return f"{whole}.{frac:05d}".rstrip("0").rstrip(".")


def cost_units(usd: float) -> int:
    """Dollars → cost units, rounded up so that no paid request is free."""
    return max(0, math.ceil(round(usd * COST_UNITS_PER_USD, 6)))


def parse_policy(header: str) -> RateLimitPolicy:
    """Parse a ``floopy-ratelimit-policy`` value; raises BadRequestError naming the problem."""
    parts = [p.strip() for p in header.split(";")]
    if not parts[0]:
        raise BadRequestError("floopy-ratelimit-policy: missing quota")
    params: dict[str, str] = {}
    for part in parts[1:]:
        name, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not name or not value:
            raise BadRequestError(f"floopy-ratelimit-policy: expected name=value, got {part!r}")
        if name not in ("w", "u", "s"):
            raise BadRequestError(f"floopy-ratelimit-policy: unknown parameter {name!r}")
        if name in params:
            raise BadRequestError(f"floopy-ratelimit-policy: parameter {name!r} given twice")
        params[name] = value
    if "w" not in params:
        raise BadRequestError("floopy-ratelimit-policy: missing window (w=<seconds>)")
    unit = _parse_enum(Unit, params.get("u", "request"), "unit (u)")
    segment, prop = _parse_segment(params.get("s", "global"))
    return RateLimitPolicy(
        quota=_parse_quota(parts[0], unit),
        window_s=_parse_int(params["w"], "window (w)"),
        unit=unit,
        segment=segment,
        property_name=prop,
    )


def _parse_int(text: str, what: str) -> int:
    if not text.isdigit():
        raise BadRequestError(f"floopy-ratelimit-policy: {what} must be a positive integer")
    return int(text)


def _parse_quota(text: str, unit: Unit) -> int:
    if unit is not Unit.COST:
        return _parse_int(text, "quota")
    if not _DECIMAL.match(text):
        raise BadRequestError("floopy-ratelimit-policy: cost quota must be a decimal in USD")
    return cost_units(float(text))


def _parse_enum(enum: type[_E], text: str, what: str) -> _E:
    try:
        return enum(text.lower())
    except ValueError:
        allowed = "|".join(m.value for m in enum)
        raise BadRequestError(
            f"floopy-ratelimit-policy: {what} must be one of {allowed}, got {text!r}"
        ) from None


def _parse_segment(text: str) -> tuple[Segment, str]:
    kind, _, name = text.partition(":")
    segment = _parse_enum(Segment, kind, "segment (s)")
    if segment is Segment.PROPERTY:
        name = name.lower()
        if not _PROPERTY_NAME.match(name):
            raise BadRequestError(
                "floopy-ratelimit-policy: segment must be property:<name> with a header-safe name"
            )
        return segment, name
    if name:
        raise BadRequestError(f"floopy-ratelimit-policy: segment {kind!r} takes no name")
    return segment, ""


def bucket_key(
    prefix: str,
    org_id: str,
    scope: str,
    policy: RateLimitPolicy,
    *,
    user_id: str = "",
    properties: dict[str, str] | None = None,
) -> str:
    """The Redis key of one bucket. The policy is part of the key so that changing a limit starts
    a fresh bucket instead of reinterpreting the old one's debt under another quota."""
    value = ""
    if policy.segment is Segment.USER:
        value = user_id
    elif policy.segment is Segment.PROPERTY:
        value = (properties or {}).get(policy.property_name, "")
    value = value or "-"
    if len(value) > 64 or not value.isprintable():
        value = "h" + hashlib.sha256(value.encode()).hexdigest()[:32]
    shape = f"{policy.quota}/{policy.window_s}/{policy.unit.value}/{policy.segment.value}"
    return RedisKeys(prefix).rate_limit(org_id, f"{scope}:{shape}:{policy.property_name}:{value}")


@dataclass(frozen=True)
class GcraState:
    """A bucket's TAT in exact form: ``TAT = at + debt / quota`` (ticks)."""

    at: int
    debt: int


@dataclass(frozen=True)
class GcraDecision:
    allowed: bool
    state: GcraState
    remaining: int
    reset_ticks: int
    retry_after_ticks: int


def gcra(
    now: int,
    state: GcraState | None,
    quota: int,
    window: int,
    cost: int,
    *,
    force: bool = False,
) -> GcraDecision:
    """One GCRA step at tick ``now``. ``force`` charges even when over the limit (tokens and cost
    are known only after the response; the next request then waits the debt off). A charge counts
    at most two quotas and debt is capped at two windows, so one huge charge cannot lock a bucket
    for ever and every figure stays below ``4 * window * quota`` (exact in Lua).

    ``remaining``: whole units still allowed now; ``reset_ticks``: until the full quota is back;
    ``retry_after_ticks``: until this request would be allowed (0 when allowed).
    """
    limit = window * quota
    cost = min(cost, 2 * quota)
    debt = 0
    if state is not None:
        debt = max(0, state.debt - max(0, now - state.at) * quota)
    new = debt + cost * window
    allowed = new <= limit
    retry = 0 if allowed else _ceil_div(new - limit, quota)
    if allowed or force:
        debt = min(new, 2 * limit)
    return GcraDecision(
        allowed=allowed,
        state=GcraState(at=now, debt=debt),
        remaining=max(0, (limit - debt) // window),
        reset_ticks=_ceil_div(debt, quota),
        retry_after_ticks=retry,
    )


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def ratelimit_policy_header(policies: list[tuple[str, RateLimitPolicy]]) -> str:
    """``RateLimit-Policy`` (IETF draft structured-field list): ``"org";q=10000;w=60``, one item
    per limit in force, named by its scope; ``qu`` says the unit when it is not requests."""
    items = []
    for name, policy in policies:
        item = f'"{name}";q={policy.quota};w={policy.window_s}'
        if policy.unit is not Unit.REQUEST:
            item += f';qu="{policy.unit.value}"'
        items.append(item)
    return ", ".join(items)


def ratelimit_header(states: list[tuple[str, int, int]]) -> str:
    """``RateLimit``: ``"org";r=<remaining>;t=<seconds until the quota is whole again>`` per
    ``(name, remaining, reset_ms)``; seconds are rounded up, as the draft asks."""
    return ", ".join(f'"{name}";r={r};t={_ceil_div(ms, 1000)}' for name, r, ms in states)


def retry_after_header(retry_after_ms: int) -> str:
    """``Retry-After`` in whole seconds, rounded up, at least 1 (0 invites a hot retry loop)."""
    return str(max(1, _ceil_div(retry_after_ms, 1000)))
