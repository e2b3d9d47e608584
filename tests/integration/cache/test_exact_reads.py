"""The exact tier's reads: lookups of concurrent requests share a pipelined round trip (Redis
itself says how few), on one node and per master of a Redis Cluster, each with its own answer
or error; a read started early (the limits stage's prefetch on a cluster) gives the entry, or
says it failed and starts the cooldown when Redis is gone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import cast

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from devstack.servers import RedisCluster, RedisServer
from gateway.clients.exact_cache import ExactCache
from gateway.clients.response_cache import ResponseCache
from gateway.policy.cache import CachedAnswer, encode_answer
from shared.redis_client import open_redis
from shared.settings import RedisSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _answer(i: int) -> CachedAnswer:
    return CachedAnswer(body=b'{"answer": %d}' % i, model="m", created_at_ms=1_000 + i)


async def _fill(cache: ExactCache, redis: Redis, n: int) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.set(cache.key(f"org-{i % 7}", f"h{i}"), encode_answer(_answer(i)), ex=600)
        await pipe.execute()


async def _reads(redis: Redis) -> int:
    return int((await redis.info("stats"))["total_reads_processed"])


async def test_concurrent_lookups_share_a_round_trip(redis_node: tuple[RedisServer, Redis]) -> None:
    _, redis = redis_node
    cache = ExactCache(redis, f"t{uuid.uuid4().hex[:8]}")
    await _fill(cache, redis, 200)
    await cast(Awaitable[int], redis.rpush(cache.key("org-0", "a-list"), "x"))  # WRONGTYPE
    before = await _reads(redis)
    results = await asyncio.gather(
        *(cache.get(f"org-{i % 7}", f"h{i}") for i in range(200)),
        cache.get("org-0", "a-list"),
        cache.get("org-1", "missing"),
        return_exceptions=True,
    )
    reads = await _reads(redis) - before
    assert results[:200] == [_answer(i) for i in range(200)]
    assert isinstance(results[200], ResponseError) and "WRONGTYPE" in str(results[200])
    assert results[201] is None
    assert reads <= 4, reads  # a pipeline (a read per 16 KiB of it) and the INFO: not 202


async def test_lookups_across_the_masters_of_a_cluster(tmp_path: Path) -> None:
    with RedisCluster(tmp_path / "cluster") as cluster:
        redis = open_redis(RedisSettings(url=cluster.url, cluster=True))
        try:
            cache = ExactCache(redis, f"t{uuid.uuid4().hex[:8]}")
            await _fill(cache, redis, 150)
            results = await asyncio.gather(
                *(cache.get(f"org-{i % 7}", f"h{i}") for i in range(150)),
                cache.get("org-3", "missing"),
            )
            assert results == [*(_answer(i) for i in range(150)), None]
            answers = ResponseCache(cache)
            key = cache.key("org-2", "h2")
            assert await answers.prefetched(answers.prefetch_exact(key)) == (
                True,
                encode_answer(_answer(2)),
            )
        finally:
            await redis.aclose()


async def test_a_prefetch_gives_the_entry_or_says_it_failed(
    redis_node: tuple[RedisServer, Redis],
) -> None:
    server, redis = redis_node
    cache = ExactCache(redis, f"t{uuid.uuid4().hex[:8]}")
    answers = ResponseCache(cache)
    await _fill(cache, redis, 3)
    found = answers.prefetch_exact(cache.key("org-1", "h1"))
    missing = answers.prefetch_exact(cache.key("org-1", "nothing"))
    assert await answers.prefetched(found) == (True, encode_answer(_answer(1)))
    assert await answers.prefetched(missing) == (True, None)
    assert not answers.redis_down()

    refused = answers.prefetch_exact(cache.key("org-1", "h1"))  # never taken: no warning
    server.kill()
    failed = answers.prefetch_exact(cache.key("org-2", "h2"))
    assert answers.prefetch_failures == 0
    assert await answers.prefetched(failed) == (False, None)
    assert answers.prefetch_failures == 1, "a failed prefetch is counted (and logged)"
    assert answers.redis_down(), "Redis gone: the exact tier's cooldown started"
    await asyncio.wait([refused])
