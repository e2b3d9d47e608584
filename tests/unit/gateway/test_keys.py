from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.keys import (
    EXPIRED_READ_GRACE_MS,
    KEY_PREFIX,
    ApiKey,
    KeyLimits,
    Org,
    Permission,
    Plan,
    Usage,
    check_monthly_quota,
    check_permission,
    check_plan,
    check_plan_access,
    check_usage,
    day_period,
    generate_key,
    hash_key,
    looks_like_key,
    month_period,
)
from shared.errors import (
    BadRequestError,
    ForbiddenError,
    MonthlyLimitExceededError,
    SubscriptionExpiredError,
    UsageLimitExceededError,
)


def test_generated_key_shape_and_hash() -> None:
    new = generate_key()
    assert new.secret.startswith(KEY_PREFIX) and looks_like_key(new.secret)
    assert new.key_hash == hash_key(new.secret) and len(new.key_hash) == 64
    assert new.secret not in new.key_hash and new.key_id.startswith("key_")
    assert generate_key().secret != new.secret


@pytest.mark.parametrize(
    "secret",
    ["", "sk-floopy-", "sk-other-" + "a" * 43, KEY_PREFIX + "a" * 129, KEY_PREFIX + "!" * 43],
)
def test_malformed_keys_are_rejected_by_shape(secret: str) -> None:
    assert not looks_like_key(secret)


@given(st.text(alphabet=st.characters(), max_size=140), st.booleans())
def test_the_shape_is_the_prefix_then_alphanumerics_dashes_or_underscores(
    tail: str, prefixed: bool
) -> None:
    secret = KEY_PREFIX + tail if prefixed else tail
    as_it_was = (
        secret.startswith(KEY_PREFIX)
        and len(KEY_PREFIX) < len(secret) <= len(KEY_PREFIX) + 128
        and all(c.isalnum() or c in "-_" for c in secret[len(KEY_PREFIX) :])
    )
    assert looks_like_key(secret) == as_it_was


def key(*perms: Permission) -> ApiKey:
    return ApiKey(key_id="k", key_hash="h", org_id="o", permissions=frozenset(perms))


def test_permissions() -> None:
    check_permission(key(Permission.PROXY), Permission.PROXY)
    check_permission(key(Permission.ADMIN), Permission.READ)
    with pytest.raises(ForbiddenError, match="'read'"):
        check_permission(key(Permission.PROXY), Permission.READ)


def test_struct_round_trip_through_json() -> None:
    k = ApiKey(
        key_id="k",
        key_hash="h",
        org_id="o",
        permissions=frozenset({Permission.READ, Permission.ADMIN}),
        limits=KeyLimits(rate_limit_policy="5;w=1", daily_cost_usd=1.5),
    )
    assert msgspec.json.decode(msgspec.json.encode(k), type=ApiKey) == k


def test_bad_rate_limit_policy_fails_at_creation() -> None:
    with pytest.raises(BadRequestError):
        KeyLimits(rate_limit_policy="5;w=nope")
    with pytest.raises(BadRequestError):
        Org(org_id="o", rate_limit_policy="")


def test_plan_expiry() -> None:
    org = Org(org_id="o", plan=Plan(expires_at_ms=1_000_000))
    check_plan(org, 999_999)
    with pytest.raises(SubscriptionExpiredError, match="1970-01-01T00:16:40"):
        check_plan(org, 1_000_000)
    check_plan(Org(org_id="o"), 2**50)


def test_monthly_quota_and_overage() -> None:
    plan = Plan(monthly_requests=100)
    check_monthly_quota(plan, 100)
    with pytest.raises(MonthlyLimitExceededError) as err:
        check_monthly_quota(plan, 101)
    assert err.value.body()["error"]["quota"] == 100
    check_monthly_quota(Plan(monthly_requests=100, overage_allowed=True), 10_000)
    check_monthly_quota(Plan(), 10**9)


@pytest.mark.parametrize(
    ("limits", "usage", "what"),
    [
        (KeyLimits(daily_tokens=100), Usage(day_tokens=100), "daily token"),
        (KeyLimits(monthly_tokens=100), Usage(month_tokens=150), "monthly token"),
        (KeyLimits(daily_cost_usd=1.0), Usage(day_cost_usd=1.0), "daily cost"),
        (KeyLimits(monthly_cost_usd=5.0), Usage(month_cost_usd=5.01), "monthly cost"),
    ],
)
def test_usage_limits(limits: KeyLimits, usage: Usage, what: str) -> None:
    with pytest.raises(UsageLimitExceededError, match=what):
        check_usage(limits, usage)


def test_usage_under_limits_passes() -> None:
    check_usage(
        KeyLimits(daily_tokens=100, daily_cost_usd=1.0), Usage(day_tokens=99, day_cost_usd=0.99)
    )
    check_usage(KeyLimits(), Usage(day_tokens=10**12))


def test_periods_are_utc() -> None:
    ms = int(datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC).timestamp() * 1000)
    assert (day_period(ms), month_period(ms)) == ("20261130", "202611")
    assert (day_period(ms + 1000), month_period(ms + 1000)) == ("20261201", "202612")


def test_an_expired_org_reads_for_a_grace_period_and_never_writes() -> None:
    expired_at = 1_000_000
    org = Org(org_id="o", plan=Plan(expires_at_ms=expired_at))
    check_plan_access(org, expired_at - 1, write=True)  # not expired yet: anything goes
    check_plan_access(org, expired_at + 1, write=False)
    check_plan_access(org, expired_at + EXPIRED_READ_GRACE_MS - 1, write=False)
    with pytest.raises(SubscriptionExpiredError):
        check_plan_access(org, expired_at + 1, write=True)
    with pytest.raises(SubscriptionExpiredError):
        check_plan_access(org, expired_at + EXPIRED_READ_GRACE_MS, write=False)
