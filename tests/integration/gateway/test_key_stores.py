"""The key stores by reader on a real Redis: the admin store writes keys and orgs, the hot
path's authenticator reads them (cache, revocation window), the usage counters are written as
the usage recorder writes them and read back as the limits script reads them."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from redis.asyncio import Redis

from gateway.clients.admin_store import AdminStore
from gateway.clients.key_auth import KeyAuthenticator
from gateway.clients.ratelimiter import Gates, RateLimiter, limits_call
from gateway.clients.usage_counters import UsageCounters, usage_expiry_s
from gateway.domain import UsageEntry
from gateway.policy.keys import KeyLimits, KeySwitches, Org, Permission, Plan, Usage, generate_key
from shared.errors import InvalidApiKeyError

pytestmark = pytest.mark.integration


async def record_usage(
    redis: Redis, counters: UsageCounters, key_id: str, tokens: int, cost: float | None, *, now: int
) -> None:
    """What the usage recorder does with a batch (``UsageCounters.add``), here of one entry."""
    await counters.add([UsageEntry(key_id, tokens, cost, now)])


async def count_request(
    redis: Redis, counters: UsageCounters, org_id: str, key_id: str, now: int
) -> tuple[int, Usage]:
    """The limits stage's one call with no bucket: the request counted against the org's monthly
    counter (the count including it) and the key's usage so far."""
    day, month = counters.usage_keys(key_id, now)
    gates = Gates(
        request_counter=counters.request_counter(org_id, now),
        counter_expire_at_s=usage_expiry_s(now, monthly=True),
        usage_day_key=day,
        usage_month_key=month,
    )
    admission = await RateLimiter(redis).admit(limits_call([], gates))
    assert admission.admitted and not admission.fail_open
    d_tok, d_cost, m_tok, m_cost = admission.usage
    used = Usage(day_tokens=d_tok, day_cost_usd=d_cost, month_tokens=m_tok, month_cost_usd=m_cost)
    return admission.requests_this_month, used


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_create_authenticate_and_store_only_the_hash(redis: Redis, prefix: str) -> None:
    store = AdminStore(redis, prefix=prefix)
    await store.put_org(Org(org_id="acme", plan=Plan(monthly_requests=10)))
    new, created = await store.create_key(
        "acme",
        name="ci",
        permissions=frozenset({Permission.PROXY, Permission.READ}),
        limits=KeyLimits(daily_tokens=1000, rate_limit_policy="10;w=60"),
        switches=KeySwitches(log_bodies=False),
    )
    key, org = await KeyAuthenticator(redis, prefix=prefix).authenticate(new.secret)
    assert key == created and org.plan.monthly_requests == 10
    assert key.switches.log_bodies is False and key.hint == new.secret[-4:]
    everything = b"".join(
        [
            k + b"".join((await cast(Awaitable[dict[bytes, bytes]], redis.hgetall(k))).values())
            for k in await redis.keys(f"{prefix}:*")
            if await redis.type(k) == b"hash"
        ]
    )
    assert new.secret.encode() not in everything
    assert new.secret[len("sk-floopy-") :].encode() not in everything


async def test_unknown_and_malformed_keys(redis: Redis, prefix: str) -> None:
    store = KeyAuthenticator(redis, prefix=prefix)
    with pytest.raises(InvalidApiKeyError):
        await store.authenticate("garbage")
    assert store.cache_misses == 0  # no Redis round trip for garbage
    with pytest.raises(InvalidApiKeyError):
        await store.authenticate(generate_key().secret)


async def test_orphaned_key_is_invalid(redis: Redis, prefix: str) -> None:
    new, _ = await AdminStore(redis, prefix=prefix).create_key("ghost-org")
    with pytest.raises(InvalidApiKeyError):
        await KeyAuthenticator(redis, prefix=prefix).authenticate(new.secret)


async def test_revocation_reaches_other_workers_within_the_ttl(redis: Redis, prefix: str) -> None:
    clock = Clock()
    own = KeyAuthenticator(redis, prefix=prefix)  # the revoking worker's
    admin = AdminStore(redis, prefix=prefix, authenticator=own)
    worker = KeyAuthenticator(redis, prefix=prefix, cache_ttl_s=5.0, clock=clock)
    await admin.put_org(Org(org_id="acme"))
    new, key = await admin.create_key("acme")
    await worker.authenticate(new.secret)
    await worker.authenticate(new.secret)
    assert (worker.cache_misses, worker.cache_hits) == (1, 1)
    await own.authenticate(new.secret)  # cached by the revoking worker too

    assert await admin.revoke_key(key.key_id)
    with pytest.raises(InvalidApiKeyError, match="revoked"):
        await own.authenticate(new.secret)  # at once on the worker that revoked it
    clock.now += 4.9
    await worker.authenticate(new.secret)  # still cached: the documented window
    clock.now += 0.2
    with pytest.raises(InvalidApiKeyError, match="revoked"):
        await worker.authenticate(new.secret)
    assert not await admin.revoke_key("key_nope")


async def test_list_keys(redis: Redis, prefix: str) -> None:
    store = AdminStore(redis, prefix=prefix)
    _, a = await store.create_key("acme", name="a", now_ms=1)
    _, b = await store.create_key("acme", name="b", now_ms=2)
    await store.create_key("other", name="c")
    await store.revoke_key(a.key_id)
    keys = await store.list_keys("acme")
    assert [(k.name, k.revoked) for k in keys] == [("a", True), ("b", False)]
    assert keys[1] == b


async def test_org_round_trip(redis: Redis, prefix: str) -> None:
    store = AdminStore(redis, prefix=prefix)
    org = Org(
        org_id="acme",
        name="Acme",
        plan=Plan(overage_allowed=True, retention_days=7),
        rate_limit_policy="500;w=60",
    )
    await store.put_org(org)
    assert await store.get_org("acme") == org
    assert await store.get_org("nope") is None


async def test_usage_counters(redis: Redis, prefix: str) -> None:
    store = UsageCounters(redis, prefix=prefix)
    # Real dates: counters of past periods would expire at once.
    today_noon = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    now = int(today_noon.timestamp() * 1000)
    await record_usage(redis, store, "k1", 100, 0.25, now=now)
    await record_usage(redis, store, "k1", 50, None, now=now)
    await record_usage(redis, store, "k1", 10, 0.5, now=now + 32 * 86_400_000)  # next month
    today = await store.usage("k1", now)
    assert (today.day_tokens, today.day_cost_usd, today.month_tokens) == (150, 0.25, 150)
    tomorrow = await store.usage("k1", now + 32 * 86_400_000)
    assert (tomorrow.day_tokens, tomorrow.month_tokens, tomorrow.month_cost_usd) == (10, 10, 0.5)
    day_key = f"{prefix}:usage:key:k1:d:{today_noon:%Y%m%d}"
    day_expiry = today_noon.replace(hour=0) + timedelta(days=3)
    # redis-py leaves the asyncio client's execute_command unannotated
    day_expires = await redis.execute_command("EXPIRETIME", day_key)  # type: ignore[no-untyped-call]
    assert day_expires == day_expiry.timestamp()
    month_key = f"{prefix}:usage:key:k1:m:{today_noon:%Y%m}"
    next_month = (today_noon.replace(day=1, hour=0) + timedelta(days=32)).replace(day=1)
    month_expiry = next_month + timedelta(days=40)
    # redis-py leaves the asyncio client's execute_command unannotated
    month_expires = await redis.execute_command("EXPIRETIME", month_key)  # type: ignore[no-untyped-call]
    assert month_expires == month_expiry.timestamp()

    counted = [(await count_request(redis, store, "acme", "k1", now))[0] for _ in range(3)]
    assert counted == [1, 2, 3]
    later = now + 32 * 86_400_000
    assert (await count_request(redis, store, "acme", "k1", later))[0] == 1
    assert await store.requests("acme", now) == 3


async def test_count_and_usage_in_one_call(redis: Redis, prefix: str) -> None:
    store = UsageCounters(redis, prefix=prefix)
    now = int(datetime.now(UTC).timestamp() * 1000)
    await record_usage(redis, store, "k1", 40, 0.1, now=now)
    first = await count_request(redis, store, "acme", "k1", now)
    second = await count_request(redis, store, "acme", "k1", now)
    assert first == (1, Usage(day_tokens=40, day_cost_usd=0.1, month_tokens=40, month_cost_usd=0.1))
    assert second[0] == 2 and (await count_request(redis, store, "acme", "k1", now))[0] == 3
