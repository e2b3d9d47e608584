"""The limits stage's one Redis script (``RateLimiter.admit``) and the stores beside it, on a
real Redis: quota and usage gates, all-or-nothing charging, templates, seeding, fail-open."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, TypedDict, cast

import pytest
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.admin.seed import apply_seed, parse_seed
from gateway.clients.admin_store import AdminStore
from gateway.clients.cooldown import redis_cooldown
from gateway.clients.exact_cache import ExactCache
from gateway.clients.key_auth import KeyAuthenticator
from gateway.clients.ratelimiter import Gate, Gates, RateLimiter, limits_call
from gateway.clients.response_cache import ResponseCache
from gateway.clients.routing_config import RoutingConfigStore
from gateway.clients.templates import TemplateStore
from gateway.clients.usage_counters import UsageCounters, usage_expiry_s
from gateway.domain import Bucket, UsageEntry
from gateway.policy.ratelimit import parse_policy
from gateway.policy.templates import TemplateMessage
from shared.errors import BadRequestError, InvalidApiKeyError

pytestmark = pytest.mark.integration


def gates(store: UsageCounters, now_ms: int, **limits: Any) -> Gates:
    day, month = store.usage_keys("k1", now_ms)
    return Gates(
        request_counter=store.request_counter("acme", now_ms),
        counter_expire_at_s=usage_expiry_s(now_ms, monthly=True),
        usage_day_key=day,
        usage_month_key=month,
        **limits,
    )


async def test_quota_gate_counts_admitted_requests_only(redis: Redis, prefix: str) -> None:
    store, limiter = UsageCounters(redis, prefix=prefix), RateLimiter(redis)
    now = int(datetime.now(UTC).timestamp() * 1000)
    bucket = Bucket(f"{prefix}:b", parse_policy("2;w=60"))
    answers = [
        await limiter.admit(limits_call([bucket], gates(store, now, monthly_quota=3)))
        for _ in range(4)
    ]
    # two pass the rate limit; the third is rate limited and must not use up quota
    assert [a.admitted for a in answers] == [True, True, False, False]
    assert [a.gate for a in answers] == [Gate.NONE] * 4
    assert [a.requests_this_month for a in answers] == [1, 2, 2, 2]
    other = Bucket(f"{prefix}:other", parse_policy("9;w=60"))
    assert (await limiter.admit(limits_call([other], gates(store, now, monthly_quota=3)))).admitted
    full = await limiter.admit(limits_call([other], gates(store, now, monthly_quota=3)))
    assert (full.gate, full.admitted, full.requests_this_month) == (Gate.MONTHLY_QUOTA, False, 3)
    # refused by the quota: the bucket was not charged
    assert full.decisions[0].remaining == 8


async def test_usage_gate_reads_the_usage_recorded(redis: Redis, prefix: str) -> None:
    store, limiter = UsageCounters(redis, prefix=prefix), RateLimiter(redis)
    now = int(datetime.now(UTC).timestamp() * 1000)
    await store.add([UsageEntry("k1", 120, 0.25, now)])  # as the usage recorder writes
    bucket = Bucket(f"{prefix}:b", parse_policy("100;w=60"))
    ok = await limiter.admit(
        limits_call([bucket], gates(store, now, daily_tokens=121, monthly_cost_usd=0.3))
    )
    assert ok.admitted and ok.usage == (120, 0.25, 120, 0.25)
    over = await limiter.admit(limits_call([bucket], gates(store, now, daily_cost_usd=0.25)))
    assert (over.gate, over.admitted) == (Gate.USAGE, False)


async def test_fail_open_when_redis_is_gone(redis_factory: Any) -> None:
    server = redis_factory()
    client = Redis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=0.5)
    store, limiter = UsageCounters(client), RateLimiter(client)
    server.stop()
    answer = await limiter.admit(
        limits_call([Bucket("b", parse_policy("1;w=60"))], gates(store, 0))
    )
    assert answer.fail_open and answer.admitted and limiter.fail_open_count == 1
    await client.aclose()


async def test_templates_are_versioned_and_cached(redis: Redis, prefix: str) -> None:
    clock = [100.0]
    writer = TemplateStore(redis, prefix=prefix)
    reader = TemplateStore(redis, prefix=prefix, cache_ttl_s=5, clock=lambda: clock[0])
    v1 = await writer.put("acme", "greet", [TemplateMessage("user", "hi {{name}}")])
    same = await writer.put(
        "acme", "greet", [TemplateMessage("user", "hi {{name}}")], only_if_changed=True
    )
    assert (v1.version, same.version) == (1, 1)
    assert (await reader.get("acme", "greet")).version == 1
    await writer.put("acme", "greet", [TemplateMessage("user", "hello {{name}}")])
    assert (await reader.get("acme", "greet")).version == 1  # "latest" cached for the TTL
    clock[0] += 5.1
    assert (await reader.get("acme", "greet")).version == 2
    assert (await reader.get("acme", "greet", 1)).messages[0].content == "hi {{name}}"
    with pytest.raises(BadRequestError, match="unknown prompt template 'greet' version 9"):
        await reader.get("acme", "greet", 9)
    with pytest.raises(BadRequestError, match="unknown prompt template"):
        await reader.get("other-org", "greet")  # templates belong to an org
    assert [t.version for t in await writer.versions("acme", "greet")] == [1, 2]


class _Stores(TypedDict):
    """``apply_seed``'s stores, passed as keyword arguments."""

    admin_store: AdminStore
    templates: TemplateStore
    routing_config: RoutingConfigStore


async def test_seed_is_idempotent_and_revocation_sticks(redis: Redis, prefix: str) -> None:
    store = AdminStore(redis, prefix=prefix)
    stores: _Stores = {
        "admin_store": store,
        "templates": TemplateStore(redis, prefix=prefix),
        "routing_config": RoutingConfigStore(redis, prefix=prefix),
    }
    seed = parse_seed(
        {
            "orgs": {"acme": {"plan": {"monthly_requests": 5}}},
            "keys": {"key-a": {"org": "acme", "secret_env": "KEY_A"}},
            "templates": [
                {"id": "t", "org": "acme", "messages": [{"role": "user", "content": "x"}]}
            ],
            "routes": {"gpt-4o": ["openai"]},
        }
    )
    env = {"KEY_A": "sk-floopy-aaa"}
    await apply_seed(seed, environ=env, **stores)
    key, org = await KeyAuthenticator(redis, prefix=prefix).authenticate("sk-floopy-aaa")
    assert (key.key_id, org.plan.monthly_requests) == ("key-a", 5)
    assert await store.revoke_key("key-a")
    await apply_seed(seed, environ=env, **stores)
    with pytest.raises(InvalidApiKeyError, match="revoked"):
        await KeyAuthenticator(redis, prefix=prefix).authenticate("sk-floopy-aaa")
    assert [t.version for t in await stores["templates"].versions("acme", "t")] == [1]
    assert await stores["routing_config"].routes() == {"gpt-4o": ["openai"]}
    # a new secret for the same key id replaces the old hash
    await apply_seed(seed, environ={"KEY_A": "sk-floopy-bbb"}, **stores)
    with pytest.raises(InvalidApiKeyError):
        await KeyAuthenticator(redis, prefix=prefix).authenticate("sk-floopy-aaa")
    stored = await cast(
        Awaitable[dict[bytes, bytes]], redis.hgetall(f"{prefix}:key:{key.key_hash}")
    )
    assert not stored


async def test_a_hung_redis_costs_one_timeout_then_the_cooldown_fails_open_at_once(
    redis_factory: Any,
) -> None:
    """SIGSTOP: the connection stays open and nothing answers. The first request waits out the
    socket timeout and fails open; the next, within the cooldown, fails open without asking."""
    server = redis_factory()
    redis = Redis.from_url(server.url, socket_timeout=0.3)
    store = UsageCounters(redis, prefix="hung")
    limiter = RateLimiter(redis, cooldown=redis_cooldown(600))  # no test machine is that slow
    now = int(datetime.now(UTC).timestamp() * 1000)
    bucket = Bucket("hung:b", parse_policy("100;w=60"))
    try:
        assert (await limiter.admit(limits_call([bucket], gates(store, now)))).admitted
        with server.hung():
            first = await limiter.admit(limits_call([bucket], gates(store, now)))
            assert first.fail_open and first.admitted
            assert (limiter.fail_open_count, limiter.cooldown_count) == (1, 0)
            second = await limiter.admit(limits_call([bucket], gates(store, now)))
            assert second.fail_open and second.admitted
            assert (limiter.fail_open_count, limiter.cooldown_count) == (2, 1)
        limiter.redis_cooldown = redis_cooldown(0)
        after = await limiter.admit(limits_call([bucket], gates(store, now)))
        assert not after.fail_open and after.admitted
    finally:
        await redis.aclose()


async def test_a_timeout_the_exact_cache_saw_spares_the_limits_their_own(
    redis_factory: Any,
) -> None:
    """The limits and the exact cache share Redis's cooldown (``open_services``): after the
    cache's lookup timed out on a hung Redis, the next request's limits fail open at once."""
    server = redis_factory()
    redis = Redis.from_url(server.url, socket_timeout=0.3)
    cooldown = redis_cooldown(600)
    cache = ResponseCache(ExactCache(redis, "shared"), cooldown=cooldown)
    store = UsageCounters(redis, prefix="shared")
    limiter = RateLimiter(redis, cooldown=cooldown)
    now = int(datetime.now(UTC).timestamp() * 1000)
    bucket = Bucket("shared:b", parse_policy("100;w=60"))
    try:
        assert (await limiter.admit(limits_call([bucket], gates(store, now)))).admitted
        with server.hung():
            with pytest.raises(RedisTimeoutError):
                await cache.look_up_exact("org", "0" * 64, 0)
            admitted = await limiter.admit(limits_call([bucket], gates(store, now)))
            assert admitted.fail_open and admitted.admitted
            assert (limiter.fail_open_count, limiter.cooldown_count) == (1, 1), "without asking"
    finally:
        await redis.aclose()


async def test_a_script_error_fails_that_request_open_without_a_cooldown(
    redis: Redis, prefix: str
) -> None:
    """Only Redis down or hung trips the cooldown: an error one request's keys provoke must not
    switch every tenant's limits off for a second."""
    store, limiter = UsageCounters(redis, prefix=prefix), RateLimiter(redis)
    now = int(datetime.now(UTC).timestamp() * 1000)
    broken = Bucket(f"{prefix}:broken", parse_policy("5;w=60"))
    # HMGET on a list: WRONGTYPE in the script
    await cast(Awaitable[int], redis.rpush(broken.key, "not a bucket"))
    refused = await limiter.admit(limits_call([broken], gates(store, now)))
    assert refused.fail_open and not limiter.redis_cooldown.active
    fine = Bucket(f"{prefix}:fine", parse_policy("5;w=60"))
    assert not (await limiter.admit(limits_call([fine], gates(store, now)))).fail_open
