"""The exact tier's writes go through the cache's drain: many scheduled together reach Redis in
a few pipelines (Redis itself says how many replies it wrote), with their TTL, on one node and on
a Redis Cluster; a batch Redis refuses is counted, never raised, and the drain carries on."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from redis.asyncio import Redis

from devstack.servers import RedisCluster, RedisServer
from gateway.clients.exact_cache import ExactCache
from gateway.clients.response_cache import CacheWrite, ResponseCache
from gateway.policy.cache import CachedAnswer, CachePlan, CacheStatus, CacheTier
from gateway.policy.cache_key import RequestKeys
from shared.redis_client import open_redis
from shared.settings import RedisSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TTL_S = 600


def _write(i: int, org_id: str = "org-a") -> CacheWrite:
    digest = hashlib.sha256(f"question {i}".encode()).hexdigest()
    keys = RequestKeys(
        exact=digest, params_hash="p", prompt_text=f"q{i}", last_turn=f"q{i}", prefix_hash="x"
    )
    plan = CachePlan(CacheStatus.MISS, tiers=(CacheTier.EXACT,), ttl_s=TTL_S)
    answer = CachedAnswer(body=b'{"answer": %d}' % i, model="m", created_at_ms=1_000 + i)
    return CacheWrite(org_id, "m", plan, keys, {}, answer)


async def _settle(cache: ResponseCache) -> None:
    async with asyncio.timeout(10):
        while cache.stats()["writes_pending"]:  # noqa: ASYNC110 - the cache signals nothing
            await asyncio.sleep(0.005)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with RedisCluster(Path(tmp_path_factory.mktemp("cluster"))) as made:
        yield made


async def _stored(cache: ResponseCache, redis: Redis, writes: list[CacheWrite]) -> None:
    for w in writes:
        key = cache.exact.key(w.org_id, w.keys.exact)
        assert await cache.exact.get(w.org_id, w.keys.exact) == w.answer
        assert TTL_S - 5 <= await redis.ttl(key) <= TTL_S


async def test_writes_scheduled_together_go_in_a_few_round_trips(
    redis_node: tuple[RedisServer, Redis],
) -> None:
    _, redis = redis_node
    cache = ResponseCache(ExactCache(redis, f"t{uuid.uuid4().hex[:8]}"))
    cache.start()
    writes = [_write(i) for i in range(600)]
    replies_before = (await redis.info("stats"))["total_writes_processed"]
    for w in writes:
        cache.schedule_write(w)
    assert cache.stats()["writes_pending"] == 600
    await _settle(cache)
    replies = (await redis.info("stats"))["total_writes_processed"] - replies_before
    sets = (await redis.info("commandstats"))["cmdstat_set"]["calls"]
    stats = cache.stats()
    await cache.close()
    assert sets == 600 and stats["writes"] == 600
    assert 3 <= cast(int, stats["write_batches"]) <= 6
    # Redis writes a pipeline's replies in a write event per 16 KiB read of it (two or three
    # here), the INFO above in one: a round trip per SET would be 600 at least
    assert replies <= 4 * cast(int, stats["write_batches"]) + 1
    assert not stats["write_failures"] and stats["writes_dropped"] == 0
    await _stored(cache, redis, writes)


async def test_writes_in_many_slots_of_a_cluster(cluster: RedisCluster) -> None:
    redis = open_redis(RedisSettings(url=cluster.url, cluster=True))
    try:
        cache = ResponseCache(ExactCache(redis, f"t{uuid.uuid4().hex[:8]}"))
        cache.start()
        writes = [_write(i, org_id=f"org-{i % 7}") for i in range(300)]
        for w in writes:
            cache.schedule_write(w)
        await _settle(cache)
        stats = cache.stats()
        await cache.close()
        assert stats["writes"] == 300 and 2 <= cast(int, stats["write_batches"]) <= 4
        assert not stats["write_failures"]
        await _stored(cache, redis, writes)
    finally:
        await redis.aclose()


async def test_a_refused_batch_is_counted_and_the_drain_carries_on(
    redis_node: tuple[RedisServer, Redis],
) -> None:
    server, redis = redis_node
    cache = ResponseCache(ExactCache(redis, f"t{uuid.uuid4().hex[:8]}"))
    cache.start()
    cache.schedule_write(_write(0))
    await _settle(cache)
    server.kill()
    for i in range(1, 101):
        cache.schedule_write(_write(i))
    await _settle(cache)  # the batch was tried, failed and let go: nothing raised
    assert cache.stats()["write_failures"] == {"exact": 100} and cache.redis_down()
    cache.schedule_write(_write(101))  # the cooldown: counted without a try, never queued
    assert cache.stats()["writes_pending"] == 0
    assert cache.stats()["write_failures"] == {"exact": 101}
    server.start()
    await asyncio.sleep(1.05)  # REDIS_COOLDOWN_S
    cache.schedule_write(_write(102))
    await _settle(cache)
    stats = cache.stats()
    await cache.close()
    assert stats["writes"] == 2 and stats["write_failures"] == {"exact": 101}
    await _stored(cache, redis, [_write(0), _write(102)])
