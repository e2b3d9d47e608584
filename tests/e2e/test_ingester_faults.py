"""Issue 9: the log pipeline under load while Redis is SIGKILLed, ClickHouse is hung
(SIGSTOP/SIGCONT) or the only ingester is SIGKILLed, each restarted. Every answered request
(by its ``Floopy-Request-Id``) must arrive, counted per request id without FINAL so a record
delivered twice is seen; rollups must equal the deduplicated raw rows afterwards.

Loads are bounded in requests, not in time; latencies are printed, never asserted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from devstack.servers import ClickHouseServer, RedisServer
from shared.streams import CONSUMER_GROUP, Sink, stream_key
from tests.e2e.harness import Floopy
from tests.e2e.load import Load

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def _stack(root: Path, redis_server: RedisServer, ch: ClickHouseServer, **env: str) -> Floopy:
    stack = Floopy(root, redis_server, ch)
    stack.start_provider()
    stack.start_ingester(**env)
    stack.start_gateway()
    return stack


def pending(floopy: Floopy) -> dict[str, int]:
    client = redis.Redis.from_url(floopy.redis.url)
    try:
        return {
            sink.value: int(
                client.xpending(stream_key(sink, floopy.tag), CONSUMER_GROUP)["pending"]
            )
            for sink in (Sink.REQUESTS, Sink.SPANS)
        }
    finally:
        client.close()


async def until_logged(floopy: Floopy, text: str, times: int, name: str = "ingester") -> None:
    log = floopy.root / f"{name}.log"
    for _ in range(600):
        if log.read_text(errors="replace").count(text) >= times:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never logged {text!r} {times} times")


@pytest.fixture
def own_redis(redis_factory: Callable[[], RedisServer]) -> RedisServer:
    return redis_factory()


@pytest.fixture
def floopy_own_redis(
    tmp_path: Path, own_redis: RedisServer, clickhouse_server: ClickHouseServer
) -> Iterator[Floopy]:
    # Reclaiming idle entries (XAUTOCLAIM) waits 300 s here: arriving within the test's
    # 45 s proves the consumer settled its batches itself. A 1 s batch age makes sure a batch
    # is in hand (then in flight, its XACK failing) when Redis dies.
    stack = _stack(
        tmp_path,
        own_redis,
        clickhouse_server,
        FLOOPY_INGESTER_CLAIM_MIN_IDLE_S="300",
        FLOOPY_INGESTER_BATCH_AGE_S="1.0",
    )
    yield stack
    stack.stop_all()


async def test_redis_sigkilled_under_load_every_record_arrives_within_seconds_once(
    floopy_own_redis: Floopy, own_redis: RedisServer
) -> None:
    floopy = floopy_own_redis

    async def script(load: Load) -> None:
        await load.until_sent(150)
        load.phase = "redis down"
        await asyncio.to_thread(own_redis.kill)
        await load.until_sent(450)  # answered from the gateway's buffer meanwhile
        # the consumer retried past its backoff (and flushed its batch in hand) a few times
        await until_logged(floopy, "stream:requests: redis error", 4)
        load.phase = "redis back"
        await asyncio.to_thread(own_redis.start)

    load = Load(floopy, limit=700)
    await load.run(script)
    print(load.report())
    assert not load.failures, load.failures[:3]
    assert len(load.answered) == 700
    assert load.latencies.get("redis down"), "no request ran while Redis was down"
    floopy.wait_for(
        lambda: not floopy.missing_and_doubled(load.answered)[0],
        timeout_s=45,
        what="every answered request in clickhouse (XAUTOCLAIM would take 300 s)",
    )
    floopy.wait_for(lambda: pending(floopy) == {"requests": 0, "spans": 0}, timeout_s=15)
    missing, doubled = floopy.missing_and_doubled(load.answered)
    assert not missing
    assert not doubled, f"{len(doubled)} request ids have more than one raw row"
