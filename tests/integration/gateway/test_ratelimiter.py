from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from devstack.servers import RedisServer, free_port
from gateway.clients.ratelimiter import RateLimitDecision, RateLimiter
from gateway.domain import Bucket
from gateway.policy.ratelimit import GcraState, RateLimitPolicy, gcra

pytestmark = pytest.mark.integration

WORKER = """
import asyncio, json, sys
from redis.asyncio import Redis
from gateway.clients.ratelimiter import RateLimiter
from gateway.domain import Bucket
from gateway.policy.ratelimit import RateLimitPolicy

async def main(url, key, quota, window_s, n):
    redis = Redis.from_url(url)
    limiter = RateLimiter(redis)
    policy = RateLimitPolicy(quota=quota, window_s=window_s)
    sys.stdin.readline()  # start together
    out = []
    for _ in range(n):
        [d] = await limiter.acquire_many([Bucket(key, policy)])
        out.append([d.allowed, d.retry_after_ms, d.now_ms, d.fail_open])
    await redis.aclose()
    print(json.dumps(out))

url, key, quota, window_s, n = sys.argv[1:]
asyncio.run(main(url, key, int(quota), int(window_s), int(n)))
"""


def key() -> str:
    return f"test:rl:{uuid.uuid4().hex}"


async def take(
    limiter: RateLimiter, key: str, policy: RateLimitPolicy, cost: int = 1, *, force: bool = False
) -> RateLimitDecision:
    """One bucket through the limiter's live call (the usage recorder's charges use it)."""
    [decision] = await limiter.acquire_many([Bucket(key, policy, cost, force)])
    return decision


def test_two_processes_share_one_limit_exactly(redis_server: RedisServer) -> None:
    quota, window_s, per_process = 25, 3600, 40
    k = key()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                redis_server.url,
                k,
                str(quota),
                str(window_s),
                str(per_process),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    started = time.time()
    outs = [p.communicate("go\n", timeout=60)[0] for p in procs]
    elapsed_ms = (time.time() - started) * 1000
    assert all(p.returncode == 0 for p in procs)
    results = [row for out in outs for row in json.loads(out)]
    assert not any(fail_open for *_, fail_open in results)
    allowed = [r for r in results if r[0]]
    denied = [r for r in results if not r[0]]
    assert len(allowed) == quota
    assert len(denied) == 2 * per_process - quota
    # Each unit comes back after window/quota; a denied request must wait until the first
    # unit is back: at most one interval, less only by the time already elapsed since then.
    interval_ms = window_s * 1000 // quota
    first_ms = min(r[2] for r in allowed)
    for _, retry_ms, now_ms, _ in denied:
        assert retry_ms == interval_ms - (now_ms - first_ms)
        assert interval_ms - elapsed_ms - 1 <= retry_ms <= interval_ms


async def test_allowed_again_after_retry_after(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    policy = RateLimitPolicy(quota=2, window_s=1)
    k = key()
    assert (await take(limiter, k, policy)).allowed
    assert (await take(limiter, k, policy)).allowed
    denied = await take(limiter, k, policy)
    assert not denied.allowed and 0 < denied.retry_after_ms <= 500
    await asyncio.sleep(denied.retry_after_ms / 1000)
    assert (await take(limiter, k, policy)).allowed


async def test_lua_script_mirrors_pure_gcra(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    policy = RateLimitPolicy(quota=7, window_s=60)
    k = key()
    state: GcraState | None = None
    steps = [(1, False)] * 8 + [(0, False), (5, True), (0, False), (3, False), (30, True)]
    for cost, force in steps:
        d = await take(limiter, k, policy, cost, force=force)
        expected = gcra(d.now_ms, state, policy.quota, policy.window_ticks, cost, force=force)
        assert (d.allowed, d.remaining, d.reset_ms, d.retry_after_ms) == (
            expected.allowed,
            expected.remaining,
            expected.reset_ticks,
            expected.retry_after_ticks,
        )
        at, debt = await cast(Awaitable[list[Any]], redis.hmget(k, ["at", "debt"]))
        state = GcraState(at=int(at), debt=int(debt))
        assert state == expected.state or not (expected.allowed or force)
    assert 0 < await redis.pttl(k) <= 2 * 60_000 + 1


async def test_idle_bucket_leaves_no_key(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    k = key()
    d = await take(limiter, k, RateLimitPolicy(quota=5, window_s=60), 0)
    assert d.allowed and d.remaining == 5
    assert await redis.exists(k) == 0


async def test_reloads_script_after_flush(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    policy = RateLimitPolicy(quota=3, window_s=60)
    k = key()
    assert (await take(limiter, k, policy)).remaining == 2
    await redis.script_flush()
    assert (await take(limiter, k, policy)).remaining == 1


async def test_fails_open_when_redis_is_unreachable() -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    limiter = RateLimiter(dead)
    try:
        d = await take(limiter, key(), RateLimitPolicy(quota=1, window_s=60))
    finally:
        await dead.aclose()
    assert d.allowed and d.fail_open
    assert limiter.fail_open_count == 1


async def test_many_buckets_all_or_nothing(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    org = Bucket(key(), RateLimitPolicy(quota=100, window_s=60))
    tight = Bucket(key(), RateLimitPolicy(quota=2, window_s=60))
    results = [await limiter.acquire_many([org, tight]) for _ in range(3)]
    assert [[d.allowed for d in r] for r in results] == [[True, True], [True, True], [True, False]]
    # the third request was denied by the tight bucket, so the org bucket was not charged
    assert results[2][0].remaining == 98
    assert (await take(limiter, org.key, org.policy, 0)).remaining == 98
    assert results[2][1].retry_after_ms == 30_000 - (results[2][1].now_ms - results[0][1].now_ms)


async def test_forced_charge_in_a_denied_request_still_counts(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    full = Bucket(key(), RateLimitPolicy(quota=1, window_s=60))
    tokens = Bucket(key(), RateLimitPolicy(quota=1000, window_s=60), cost=300, force=True)
    await take(limiter, full.key, full.policy)
    denied, charged = await limiter.acquire_many([full, tokens])
    assert not denied.allowed and charged.allowed and charged.remaining == 700
