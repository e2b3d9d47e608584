"""Concurrent calls of one script share a pipelined round trip (Redis itself says how few), each
gets its own answer or error, a flushed script is loaded again, and a dead Redis is every
caller's error; the limiter built on one node uses it and still decides like before."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from devstack.servers import RedisServer
from gateway.clients.command_batch import script_batch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ECHO = """
if ARGV[1] == 'boom' then return redis.error_reply('boom ' .. KEYS[1]) end
redis.call('INCR', KEYS[1])
return ARGV[1]
"""


async def _reads(redis: Redis) -> int:
    return int((await redis.info("stats"))["total_reads_processed"])


async def test_concurrent_calls_share_a_round_trip_and_get_their_own_answers(
    redis_node: tuple[RedisServer, Redis],
) -> None:
    _, redis = redis_node
    batch = script_batch(redis, redis.register_script(ECHO))
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


async def test_a_flushed_script_is_loaded_again(redis_node: tuple[RedisServer, Redis]) -> None:
    _, redis = redis_node
    batch = script_batch(redis, redis.register_script(ECHO))
    assert await batch(["a"], ["1"]) == b"1"
    await redis.script_flush()
    results = await asyncio.gather(*(batch([f"n{i}"], [str(i)]) for i in range(20)))
    assert results == [str(i).encode() for i in range(20)]


async def test_a_dead_redis_is_every_callers_error(redis_node: tuple[RedisServer, Redis]) -> None:
    server, redis = redis_node
    batch = script_batch(redis, redis.register_script(ECHO))
    assert await batch(["a"], ["1"]) == b"1"
    server.kill()
    results = await asyncio.gather(
        *(batch([f"d{i}"], ["x"]) for i in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, RedisConnectionError | OSError) for r in results), results
    server.start()
    assert await batch(["a"], ["2"]) == b"2"


async def test_a_cancelled_caller_leaves_the_others_their_answers(
    redis_node: tuple[RedisServer, Redis],
) -> None:
    _, redis = redis_node
    batch = script_batch(redis, redis.register_script(ECHO))
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
    redis_node: tuple[RedisServer, Redis],
) -> None:
    """The pool's check for unread data (``_HiredisPacked.can_read_destructive``: a buffer
    look, not redis-py's socket poll) still finds a reply nobody read: the connection is
    replaced, and the next command gets its own answer, not the stale one."""
    _, redis = redis_node
    await redis.set("right", "answer")
    pool = redis.connection_pool
    connection = await pool.get_connection()
    await connection.send_command("GET", "missing")  # its reply (nil) is never read
    await asyncio.sleep(0.1)  # received: in the connection's stream buffer
    await pool.release(connection)
    assert await redis.get("right") == b"answer"
    assert await redis.get("missing") is None


async def test_replies_already_read_are_checked_like_redis_pys(
    redis_node: tuple[RedisServer, Redis],
) -> None:
    """A pipeline's later replies come from the parser's buffer (``_HiredisPacked.read_response``
    skips the read timeout for them): each is still the right answer in order, an error reply
    is that command's error, and the connection stays usable."""
    _, redis = redis_node
    await redis.set("text", "v")
    for _ in range(3):
        async with redis.pipeline(transaction=False) as pipe:
            for name, *args in (
                ("get", "text"),
                ("incr", "text"),
                ("get", "missing"),
                ("set", "n", 1),
                ("incr", "n"),
                ("lrange", "text", 0, 1),
            ):
                getattr(pipe, name)(*args)
            results = await pipe.execute(raise_on_error=False)
        assert results[0] == b"v" and results[2] is None and results[3] is True
        assert results[4] == 2
        assert isinstance(results[1], ResponseError) and "not an integer" in str(results[1])
        assert isinstance(results[5], ResponseError) and "WRONGTYPE" in str(results[5])
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get("text")
        pipe.incr("text")
        with pytest.raises(ResponseError, match="not an integer"):
            await pipe.execute()
    assert await redis.get("text") == b"v"
    # a connection's own reads: the second and third replies are in the buffer by then
    connection = await redis.connection_pool.get_connection()
    try:
        for command in (("GET", "text"), ("INCR", "text"), ("SET", "text", "w")):
            await connection.send_command(*command)
        await asyncio.sleep(0.1)
        assert await connection.read_response() == b"v"
        with pytest.raises(ResponseError, match="not an integer"):
            await connection.read_response()
        assert await connection.read_response() == b"OK"
    finally:
        await redis.connection_pool.release(connection)


async def test_a_write_to_a_hung_redis_still_times_out(
    redis_node: tuple[RedisServer, Redis],
) -> None:
    """Writes go straight to the transport (``_HiredisPacked.send_packed_command``) unless it
    is paused: a hung Redis with more sent than the socket buffers holds still ends in the
    socket timeout, not a wait without end, and the client works once Redis is back."""
    server, redis = redis_node
    big = b"x" * (8 << 20)
    with server.hung():
        for _ in range(2):  # the second write finds the transport paused: redis-py's timed path
            with pytest.raises(RedisTimeoutError):
                await redis.set("big", big)
    assert await redis.set("after", "1")
    assert await redis.get("after") == b"1"
