from __future__ import annotations

import pytest

from gateway.policy.keys import ApiKey, KeyLimits, Org, Plan, Usage
from gateway.policy.limits import (
    GATE_MONTHLY,
    GATE_NONE,
    GATE_USAGE,
    admission_cost,
    after_response_cost,
    policies_for,
    quota_gate,
    rate_limit_headers,
    refusal,
    scope_of,
)
from gateway.policy.ratelimit import parse_policy, ratelimit_policy_header
from shared.errors import (
    BadRequestError,
    MonthlyLimitExceededError,
    RateLimitExceededError,
    UsageLimitExceededError,
)


def key(policy: str = "", **limits: int) -> ApiKey:
    return ApiKey(
        key_id="k1",
        key_hash="h",
        org_id="o",
        limits=KeyLimits(rate_limit_policy=policy, **limits),
    )


def test_policies_in_force_and_their_scopes() -> None:
    org = Org(org_id="o")
    assert [n for n, _ in policies_for(org, key(), "")] == ["org"]
    both = policies_for(org, key("5;w=1"), "7;w=60;u=token;s=user")
    assert [(n, p.quota) for n, p in both] == [("org", 10_000), ("key", 5), ("request", 7)]
    assert [scope_of(n, key()) for n, _ in both] == ["org", "key:k1", "request"]
    with pytest.raises(BadRequestError, match="unit"):
        policies_for(org, key(), "7;w=60;u=bytes")


def test_costs_by_unit() -> None:
    request, token, cost = (parse_policy(f"9;w=60;u={u}") for u in ("request", "token", "cost"))
    assert [admission_cost(p) for p in (request, token, cost)] == [1, 0, 0]
    assert after_response_cost(request, 500, 0.1) == 0
    assert after_response_cost(token, 500, 0.1) == 500
    assert after_response_cost(cost, 500, 0.012) == 1200  # thousandths of a cent
    assert after_response_cost(cost, 500, None) == 0  # unknown cost is not guessed


def test_quota_gate_counts_only_with_overage() -> None:
    assert quota_gate(Plan(monthly_requests=5)) == 5
    assert quota_gate(Plan(monthly_requests=5, overage_allowed=True)) is None
    assert quota_gate(Plan()) is None


def test_headers() -> None:
    policies = [("org", parse_policy("100;w=60")), ("key", parse_policy("5;w=10;u=token"))]
    headers = rate_limit_headers(
        ratelimit_policy_header(policies), policies, [(99, 600), (0, 10_001)]
    )
    assert headers == {
        "RateLimit-Policy": '"org";q=100;w=60, "key";q=5;w=10;qu="token"',
        "RateLimit": '"org";r=99;t=1, "key";r=0;t=11',
    }


def refuse(gate: int, denied: list[tuple[str, int]] | None = None, **kw: object) -> object:
    return refusal(
        gate,
        plan=kw.get("plan", Plan(monthly_requests=3)),  # type: ignore[arg-type]
        limits=kw.get("limits", KeyLimits(daily_tokens=10)),  # type: ignore[arg-type]
        requests_this_month=3,
        usage=Usage(day_tokens=12),
        denied_retry_ms=denied or [],
    )


def test_refusals_and_their_precedence() -> None:
    assert refuse(GATE_NONE) is None
    monthly = refuse(GATE_MONTHLY, [("key", 5000)])
    assert isinstance(monthly, MonthlyLimitExceededError)
    usage = refuse(GATE_USAGE, [("key", 5000)])
    assert isinstance(usage, UsageLimitExceededError) and usage.details["limit"] == 10
    limited = refuse(GATE_NONE, [("org", 1200), ("key", 5001)])
    assert isinstance(limited, RateLimitExceededError)
    assert limited.headers == {"Retry-After": "6"}
    assert limited.details == {"limit": "key", "retry_after_s": 6}
    # the script and the pure check disagree only if data changed in between: still refused
    assert isinstance(refuse(GATE_USAGE, limits=KeyLimits()), UsageLimitExceededError)
