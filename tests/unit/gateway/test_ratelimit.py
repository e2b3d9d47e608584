from __future__ import annotations

import pytest

from gateway.policy.ratelimit import (
    COST_UNITS_PER_USD,
    GcraState,
    RateLimitPolicy,
    Segment,
    Unit,
    bucket_key,
    cost_units,
    gcra,
    parse_policy,
    ratelimit_header,
    ratelimit_policy_header,
    retry_after_header,
)
from shared.errors import BadRequestError


def test_parse_full_policy() -> None:
    p = parse_policy("1000;w=60;u=request;s=user")
    assert p == RateLimitPolicy(quota=1000, window_s=60, unit=Unit.REQUEST, segment=Segment.USER)


def test_parse_defaults_and_whitespace_and_order() -> None:
    assert parse_policy(" 5 ; w = 10 ") == RateLimitPolicy(quota=5, window_s=10)
    p = parse_policy("50000;s=property:Tenant;u=token;w=3600")
    assert (p.unit, p.segment, p.property_name) == (Unit.TOKEN, Segment.PROPERTY, "tenant")


def test_parse_cost_quota_in_dollars() -> None:
    p = parse_policy("5.5;w=86400;u=cost")
    assert p.quota == 5.5 * COST_UNITS_PER_USD
    assert parse_policy(p.render()) == p


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("", "missing quota"),
        ("100", "missing window"),
        ("abc;w=60", "quota must be a positive integer"),
        ("0;w=60", "quota must be positive"),
        ("1.5;w=60", "quota must be a positive integer"),
        ("10;w=0", "window must be"),
        ("10;w=-1", "window (w) must be a positive integer"),
        ("10;w=60;u=bytes", "unit (u) must be one of request|token|cost"),
        ("10;w=60;s=team", "segment (s) must be one of"),
        ("10;w=60;s=property:", "property:<name>"),
        ("10;w=60;s=user:bob", "takes no name"),
        ("10;w=60;x=1", "unknown parameter 'x'"),
        ("10;w=60;w=30", "given twice"),
        ("10;w", "expected name=value"),
        ("1x;w=60;u=cost", "decimal in USD"),
        ("999999999999;w=2678400", "too large"),
    ],
)
def test_parse_rejects_with_named_problem(header: str, problem: str) -> None:
    with pytest.raises(BadRequestError) as err:
        parse_policy(header)
    assert problem in err.value.message


def test_render_round_trips() -> None:
    for text in ("1000;w=60;u=request;s=user", "7;w=1;u=token;s=property:team"):
        assert parse_policy(text).render() == text


def test_tick_coarsens_only_for_huge_products() -> None:
    assert RateLimitPolicy(quota=10_000, window_s=60).tick_ms == 1
    big = RateLimitPolicy(quota=10**9, window_s=86_400)
    assert big.tick_ms is not None and big.tick_ms > 1
    assert big.window_ticks * big.quota * 4 <= 2**50


def test_cost_units_round_up() -> None:
    assert cost_units(0.0) == 0
    assert cost_units(0.000001) == 1
    assert cost_units(0.5) == COST_UNITS_PER_USD // 2


def run(quota: int, window: int, times: list[int], cost: int = 1) -> list[bool]:
    state: GcraState | None = None
    out = []
    for now in times:
        d = gcra(now, state, quota, window, cost)
        state = d.state
        out.append(d.allowed)
    return out


@pytest.mark.parametrize("quota", [1, 3, 7, 10, 10_000])
def test_burst_of_exactly_quota_even_when_interval_is_not_integral(quota: int) -> None:
    allowed = run(quota, 60_000, [5] * (quota + 3))
    assert allowed.count(True) == quota
    assert allowed[:quota] == [True] * quota


def test_retry_after_is_the_exact_wait() -> None:
    quota, window = 7, 60_000
    state = None
    for _ in range(quota):
        state = gcra(0, state, quota, window, 1).state
    denied = gcra(0, state, quota, window, 1)
    assert not denied.allowed
    assert denied.retry_after_ticks == -(-window // quota)  # ceil(60000/7) = 8572
    assert not gcra(denied.retry_after_ticks - 1, state, quota, window, 1).allowed
    assert gcra(denied.retry_after_ticks, state, quota, window, 1).allowed


def test_denied_request_does_not_consume() -> None:
    d1 = gcra(0, None, 1, 1000, 1)
    d2 = gcra(0, d1.state, 1, 1000, 1)
    assert not d2.allowed and d2.state.debt == d1.state.debt


def test_remaining_and_reset() -> None:
    d = gcra(100, None, 10, 1000, 3)
    assert (d.remaining, d.reset_ticks, d.retry_after_ticks) == (7, 300, 0)
    later = gcra(400, d.state, 10, 1000, 0)
    assert (later.remaining, later.reset_ticks) == (10, 0)


def test_forced_charge_puts_bucket_into_debt_and_is_capped() -> None:
    d = gcra(0, None, 100, 1000, 10_000, force=True)
    assert not d.allowed
    assert d.state.debt == 2 * 100 * 1000  # two windows at most
    peek = gcra(0, d.state, 100, 1000, 0)
    assert not peek.allowed and peek.retry_after_ticks == 1000
    assert gcra(1000, d.state, 100, 1000, 0).allowed


def test_clock_going_backwards_does_not_refund() -> None:
    d = gcra(1000, None, 1, 1000, 1)
    assert not gcra(500, d.state, 1, 1000, 1).allowed


def test_bucket_keys_separate_segments_and_policies() -> None:
    user = parse_policy("10;w=60;s=user")
    prop = parse_policy("10;w=60;s=property:team")
    assert bucket_key("f", "o", "req", user, user_id="a") != bucket_key(
        "f", "o", "req", user, user_id="b"
    )
    assert bucket_key("f", "o", "req", user) == bucket_key("f", "o", "req", user, user_id="")
    k1 = bucket_key("f", "o", "req", prop, properties={"team": "x"})
    k2 = bucket_key(
        "f", "o", "req", parse_policy("11;w=60;s=property:team"), properties={"team": "x"}
    )
    assert k1 != k2 and k1.startswith("f:rl:o:req:")
    long_key = bucket_key("f", "o", "req", user, user_id="u" * 500)
    assert len(long_key) < 120


def test_headers() -> None:
    org = RateLimitPolicy(quota=10_000, window_s=60)
    tok = RateLimitPolicy(quota=5000, window_s=3600, unit=Unit.TOKEN)
    assert ratelimit_policy_header([("org", org), ("request", tok)]) == (
        '"org";q=10000;w=60, "request";q=5000;w=3600;qu="token"'
    )
    assert ratelimit_header([("org", 9_999, 6), ("request", 0, 1500)]) == (
        '"org";r=9999;t=1, "request";r=0;t=2'
    )
    assert retry_after_header(0) == "1"
    assert retry_after_header(1000) == "1"
    assert retry_after_header(1001) == "2"
