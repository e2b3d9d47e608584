"""Floopy API keys, orgs and their plans, and the checks made on them (pure: no I/O).

A generated key is ``sk-floopy-`` followed by 43 URL-safe characters (256 random bits). It is
shown once, at creation; only its SHA-256 is stored. Keys declared in a config seed (a known dev
key such as ``sk-floopy-dev-local``) may be shorter, so the shape check accepts 1-128 URL-safe
characters after the prefix. A fast hash is the right one here: the secret has full
entropy, so there is nothing for a slow password hash to protect against, and the hot path
hashes on every request. ``key_id`` is a separate random name, safe to print and log.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache

import msgspec

from gateway.policy.cache import CacheSettings
from gateway.policy.firewall import FirewallConfig, check_threshold
from gateway.policy.ratelimit import parse_policy
from shared.errors import (
    ForbiddenError,
    MonthlyLimitExceededError,
    SubscriptionExpiredError,
    UsageLimitExceededError,
)

__all__ = [
    "DEFAULT_ORG_RATE_LIMIT",
    "EXPIRED_READ_GRACE_MS",
    "KEY_PREFIX",
    "ApiKey",
    "KeyLimits",
    "KeySwitches",
    "NewKey",
    "Org",
    "Permission",
    "Plan",
    "Usage",
    "check_monthly_quota",
    "check_permission",
    "check_plan",
    "check_plan_access",
    "check_usage",
    "day_period",
    "generate_key",
    "hash_key",
    "looks_like_key",
    "month_period",
    "utc_day",
]

KEY_PREFIX = "sk-floopy-"
_MAX_SECRET_CHARS = 128
DEFAULT_ORG_RATE_LIMIT = "10000;w=60"
"""docs/architecture.md §2: org default of 10,000 requests per minute."""


class Permission(StrEnum):
    PROXY = "proxy"  # POST /v1/chat/completions
    READ = "read"  # analytics and console reads
    ADMIN = "admin"  # manage keys, orgs, providers, routes, templates


class KeyLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-key limits; None means "no limit of this kind"."""

    rate_limit_policy: str = ""
    daily_tokens: int | None = None
    monthly_tokens: int | None = None
    daily_cost_usd: float | None = None
    monthly_cost_usd: float | None = None
    firewall_flag_threshold: float | None = None
    """Over the org's firewall thresholds for this key's requests (None: the org's)."""
    firewall_block_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.rate_limit_policy:
            parse_policy(self.rate_limit_policy)  # a bad policy fails at creation, not per request
        check_threshold("firewall_flag_threshold", self.firewall_flag_threshold)
        check_threshold("firewall_block_threshold", self.firewall_block_threshold)


class KeySwitches(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    cache: bool = True
    firewall: bool = True
    log_bodies: bool = True


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    key_hash: str
    org_id: str
    name: str = ""
    hint: str = ""  # last four characters, so a person can tell keys apart
    created_at_ms: int = 0
    permissions: frozenset[Permission] = frozenset({Permission.PROXY})
    limits: KeyLimits = KeyLimits()
    switches: KeySwitches = KeySwitches()
    revoked: bool = False
    revoked_at_ms: int = 0


class Plan(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    monthly_requests: int | None = None  # None: unlimited
    overage_allowed: bool = False
    retention_days: int = 30
    expires_at_ms: int | None = None  # None: never


class Org(msgspec.Struct, frozen=True, kw_only=True):
    org_id: str
    name: str = ""
    plan: Plan = Plan()
    rate_limit_policy: str = DEFAULT_ORG_RATE_LIMIT
    cache: CacheSettings = CacheSettings()
    firewall: FirewallConfig = FirewallConfig()

    def __post_init__(self) -> None:
        parse_policy(self.rate_limit_policy)


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """A key's spend so far in the current UTC day and month."""

    day_tokens: int = 0
    day_cost_usd: float = 0.0
    month_tokens: int = 0
    month_cost_usd: float = 0.0


class NewKey(msgspec.Struct, frozen=True):
    secret: str  # shown once, never stored
    key_hash: str
    key_id: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key() -> NewKey:
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return NewKey(secret=secret, key_hash=hash_key(secret), key_id="key_" + secrets.token_hex(8))


_KEY_SHAPE = re.compile(re.escape(KEY_PREFIX) + rf"[\w-]{{1,{_MAX_SECRET_CHARS}}}")
r"""``\w`` is ``str.isalnum`` or ``_``, as the shape always was; one match is ≈ 8x cheaper than
a loop over the characters, and it runs twice a request (the guard, then auth)."""


def looks_like_key(secret: str) -> bool:
    """Cheap shape check, so garbage never costs a Redis round trip."""
    return _KEY_SHAPE.fullmatch(secret) is not None


def check_permission(key: ApiKey, needed: Permission) -> None:
    """Admin implies every permission: an admin key that cannot read would only confuse."""
    if needed not in key.permissions and Permission.ADMIN not in key.permissions:
        raise ForbiddenError(f"this API key lacks the {needed.value!r} permission")


def check_plan(org: Org, now_ms: int) -> None:
    expires = org.plan.expires_at_ms
    if expires is not None and now_ms >= expires:
        when = datetime.fromtimestamp(expires / 1000, UTC).isoformat(timespec="seconds")
        raise SubscriptionExpiredError(f"the organization's plan expired at {when}")


EXPIRED_READ_GRACE_MS = 30 * 86_400_000
"""How long after its plan expired an org may still read its logs and its admin data."""


def check_plan_access(org: Org, now_ms: int, *, write: bool) -> None:
    """The console and admin API of an expired org: reads for ``EXPIRED_READ_GRACE_MS`` (its
    people can still see and export what they had), never a write (no new keys, templates or
    key changes; revoking stays allowed, handled by the caller)."""
    expires = org.plan.expires_at_ms
    if expires is None or now_ms < expires:
        return
    if write or now_ms >= expires + EXPIRED_READ_GRACE_MS:
        check_plan(org, now_ms)


def check_monthly_quota(plan: Plan, requests_this_month: int) -> None:
    """``requests_this_month`` counts this request too (the counter was incremented first)."""
    quota = plan.monthly_requests
    if quota is not None and requests_this_month > quota and not plan.overage_allowed:
        raise MonthlyLimitExceededError(
            f"monthly request quota of {quota} used up", details={"quota": quota}
        )


def check_usage(limits: KeyLimits, usage: Usage) -> None:
    """Refuse once a limit is reached. The request that crosses a limit is let through: its
    tokens and cost are known only after it ran."""
    checks: list[tuple[str, float | None, float]] = [
        ("daily token", limits.daily_tokens, usage.day_tokens),
        ("monthly token", limits.monthly_tokens, usage.month_tokens),
        ("daily cost", limits.daily_cost_usd, usage.day_cost_usd),
        ("monthly cost", limits.monthly_cost_usd, usage.month_cost_usd),
    ]
    for what, limit, used in checks:
        if limit is not None and used >= limit:
            raise UsageLimitExceededError(
                f"{what} limit of {limit} reached for this API key",
                details={"limit": limit, "used": used},
            )


_DAY_MS = 86_400_000


def utc_day(now_ms: int) -> int:
    """The UTC day holding ``now_ms``: the day's and the month's periods are functions of it."""
    return now_ms // _DAY_MS


def day_period(now_ms: int) -> str:
    return _period_text(utc_day(now_ms), "%Y%m%d")


def month_period(now_ms: int) -> str:
    return _period_text(utc_day(now_ms), "%Y%m")


@lru_cache(maxsize=64)
def _period_text(day: int, fmt: str) -> str:
    """Per UTC day, not per request: every request formats the same few dates (hot path)."""
    return datetime.fromtimestamp(day * 86_400, UTC).strftime(fmt)
