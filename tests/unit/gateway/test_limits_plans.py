"""The limits stage's plans: built once per key, org, policy header and UTC day in a worker, and
rebuilt whenever one of those changes (a key edited by an admin is a new object). Clients are
built without connecting: planning does no I/O."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from redis.asyncio import Redis

from gateway.clients.ratelimiter import RateLimiter
from gateway.clients.usage_counters import UsageCounters
from gateway.context import RequestContext
from gateway.pipeline import limits
from gateway.policy.headers import RequestMeta
from gateway.policy.keys import ApiKey, KeyLimits, Org

if TYPE_CHECKING:
    from gateway.clients.response_cache import ResponseCache

DAY_MS = 86_400_000
NOON = 20_000 * DAY_MS + DAY_MS // 2


def _deps() -> limits.LimitsDeps:
    redis = Redis()
    return limits.LimitsDeps(
        UsageCounters(redis),
        RateLimiter(redis),
        cast("ResponseCache", None),  # planning never reads the cache
        "floopy",
        10_000,
    )


def _key(policy: str = "5;w=60", daily_tokens: int | None = None) -> ApiKey:
    return ApiKey(
        key_id="k1",
        key_hash="h",
        org_id="o",
        limits=KeyLimits(rate_limit_policy=policy, daily_tokens=daily_tokens),
    )


def _plan(
    deps: limits.LimitsDeps,
    key: ApiKey,
    org: Org,
    *,
    at_ms: int = NOON,
    header: str = "",
    user: str = "",
) -> limits._Plan:
    ctx = RequestContext(
        headers={},
        created_at_ms=at_ms,
        meta=RequestMeta(ratelimit_policy=header, user_id=user),
    )
    return limits._plan_for(ctx, key, org, deps)


def test_one_plan_per_key_org_header_and_day() -> None:
    deps, key, org = _deps(), _key(), Org(org_id="o")
    first = _plan(deps, key, org)
    assert _plan(deps, key, org, at_ms=NOON + 3_600_000) is first
    assert first.policy_header == '"org";q=10000;w=60, "key";q=5;w=60'
    assert [b.key for b in first.call.buckets] == list(first.call.keys[:2])

    tomorrow = _plan(deps, key, org, at_ms=NOON + DAY_MS)
    assert tomorrow is not first
    assert tomorrow.call.keys[3] != first.call.keys[3]  # the day's usage counter
    assert tomorrow.call.keys[4] == first.call.keys[4]  # the same month's

    with_header = _plan(deps, key, org, header="7;w=60;u=token")
    assert with_header is not first and len(with_header.call.buckets) == 3
    assert [b.policy.quota for b in with_header.charges] == [7]


def test_an_edited_key_or_org_gets_a_new_plan() -> None:
    deps, org = _deps(), Org(org_id="o")
    old = _plan(deps, _key(daily_tokens=100), org)
    edited = _plan(deps, _key(daily_tokens=200), org)
    assert edited is not old and "200" in edited.call.args and "200" not in old.call.args
    same_values = _key(daily_tokens=200)  # equal, but another object: planned again
    assert _plan(deps, same_values, org) is not edited
    assert len(deps.plans) == 1  # each in the place of the one before
    assert (
        _plan(deps, same_values, Org(org_id="o", rate_limit_policy="9;w=60")).policies[0][1].quota
        == 9
    )


def test_segmented_plans_are_never_kept() -> None:
    deps, key, org = _deps(), _key(), Org(org_id="o")
    a = _plan(deps, key, org, header="2;w=60;s=user", user="a")
    b = _plan(deps, key, org, header="2;w=60;s=user", user="b")
    assert (
        any(bucket.segmented for bucket in a.call.buckets) and a.call.keys[2] != b.call.keys[2]
    )  # each user's own bucket
    assert not deps.plans


def test_plans_are_bounded() -> None:
    deps, key, org = _deps(), _key(), Org(org_id="o")
    for n in range(limits.PLANS_MAX + 5):
        _plan(deps, key, org, header=f"{n + 1};w=60")
    assert 0 < len(deps.plans) <= limits.PLANS_MAX
