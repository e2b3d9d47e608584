"""Concurrent calls of one script share a pipelined round trip (Redis itself says how few), each
gets its own answer or error, a flushed script is loaded again, and a dead Redis is every
caller's error; the limiter built on one node uses it and still decides like before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from devstack.servers import RedisServer
from gateway.clients.script_batch import ScriptBatch
from shared.redis_client import open_redis
from shared.settings import RedisSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ECHO = """
if ARGV[1] == 'boom' then return redis.error_reply('boom ' .. KEYS[1]) end
redis.call('INCR', KEYS[1])
return ARGV[1]
"""


@pytest.fixture
async def node(
    redis_factory: Callable[[], RedisServer],
) -> AsyncIterator[tuple[RedisServer, Redis]]:
    """A Redis of its own: its INFO counters move only for this test."""
    server = redis_factory()
    client = open_redis(RedisSettings(url=server.url, socket_timeout_s=2, connect_timeout_s=1))
    yield server, client
    await client.aclose()


async def _reads(redis: Redis) -> int:
    return int((await redis.info("stats"))["total_reads_processed"])


async def test_concurrent_calls_share_a_round_trip_and_get_their_own_answers(
    node: tuple[RedisServer, Redis],
) -> None:
    _, redis = node
    batch = ScriptBatch(redis, redis.register_script(ECHO))
    await batch(["warm"], ["x"])  # a lone call: straight through the Script, which loads it
    before = await _reads(redis)
    calls = [batch([f"k{i}"], ["boom" if i % 10 == 3 else f"v{i}"]) for i in range(200)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    reads = await _reads(redis) - before
    for i, result in enumerate(results):
        if i % 10 == 3:
            assert isinstance(result, ResponseError) and f"boom k{i}" in str(result)
        else:
            assert result == f"v{i}".encode()
    assert await redis.get("k0") == b"1" and await redis.get("k3") is None
    # one read event per pipeline (or per 16 KiB of it) and one for the INFO: not 200
    assert reads <= 10, reads


async def test_a_flushed_script_is_loaded_again(node: tuple[RedisServer, Redis]) -> None:
    _, redis = node
    batch = ScriptBatch(redis, redis.register_script(ECHO))
    assert await batch(["a"], ["1"]) == b"1"
    await redis.script_flush()
    results = await asyncio.gather(*(batch([f"n{i}"], [str(i)]) for i in range(20)))
    assert results == [str(i).encode() for i in range(20)]


async def test_a_dead_redis_is_every_callers_error(node: tuple[RedisServer, Redis]) -> None:
    server, redis = node
    batch = ScriptBatch(redis, redis.register_script(ECHO))
    assert await batch(["a"], ["1"]) == b"1"
    server.kill()
    results = await asyncio.gather(
        *(batch([f"d{i}"], ["x"]) for i in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, RedisConnectionError | OSError) for r in results), results
    server.start()
    assert await batch(["a"], ["2"]) == b"2"


async def test_a_cancelled_caller_leaves_the_others_their_answers(
    node: tuple[RedisServer, Redis],
) -> None:
    _, redis = node
    batch = ScriptBatch(redis, redis.register_script(ECHO))
    tasks = [asyncio.create_task(batch([f"c{i}"], [f"v{i}"])) for i in range(10)]
    await asyncio.sleep(0)  # queued, not yet sent
    tasks[4].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[4], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 4] == [
        f"v{i}".encode() for i in range(10) if i != 4
    ]
    assert await redis.get("c4") == b"1"  # its script ran: it had been queued


async def test_a_pooled_connection_with_unread_data_is_not_handed_out(
    node: tuple[RedisServer, Redis],
) -> None:
    """The pool's check for unread data (``_HiredisPacked.can_read_destructive``: a buffer
    look, not redis-py's socket poll) still finds a reply nobody read: the connection is
    replaced, and the next command gets its own answer, not the stale one."""
    _, redis = node
    await redis.set("right", "answer")
    pool = redis.connection_pool
    connection = await pool.get_connection()
    await connection.send_command("GET", "missing")  # its reply (nil) is never read
    await asyncio.sleep(0.1)  # received: in the connection's stream buffer
    await pool.release(connection)
    assert await redis.get("right") == b"answer"
    assert await redis.get("missing") is None
