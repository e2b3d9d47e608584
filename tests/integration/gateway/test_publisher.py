"""The publisher against real Redis: records arrive decoded, a full buffer drops and counts,
and an outage keeps records buffered until Redis is back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from devstack.servers import RedisServer
from gateway.clients.publisher import Publisher
from gateway.settings import PublisherSettings
from shared.codec import decode_record, encode_record
from shared.records import RequestRecord
from shared.streams import RECORD_FIELD, Sink, stream_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _record(i: int) -> bytes:
    return encode_record(
        RequestRecord(
            request_id=f"r{i}", org_id="o", api_key_id="k", created_at_ms=1_700_000_000_000 + i
        )
    )


async def _wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - counters of a task, not an event
            await asyncio.sleep(0.02)


async def test_records_reach_the_stream_in_order(redis_server: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    redis = Redis.from_url(redis_server.url)
    publisher = Publisher(redis, PublisherSettings(batch_records=7), prefix=prefix)
    publisher.start()
    try:
        for i in range(50):
            assert publisher.submit(Sink.REQUESTS, _record(i))
        await _wait_for(lambda: publisher.published == 50)
        entries = await redis.xrange(stream_key(Sink.REQUESTS, prefix))
        ids = [
            decode_record(Sink.REQUESTS, fields[RECORD_FIELD]).request_id for _, fields in entries
        ]
        assert ids == [f"r{i}" for i in range(50)]
        assert publisher.buffered == 0 and publisher.dropped == 0
    finally:
        await publisher.stop()
        await redis.aclose()


async def test_a_full_buffer_drops_new_records_and_counts_them(redis_server: RedisServer) -> None:
    redis = Redis.from_url(redis_server.url)
    publisher = Publisher(redis, PublisherSettings(buffer_records=10), prefix="unused")
    # not started: nothing drains, so the bound is what decides
    accepted = [publisher.submit(Sink.SPANS, _record(i)) for i in range(15)]
    assert accepted == [True] * 10 + [False] * 5
    assert (publisher.buffered, publisher.dropped) == (10, 5)
    await redis.aclose()


async def test_outage_keeps_records_until_redis_returns(
    redis_factory: Callable[[], RedisServer],
) -> None:
    server = redis_factory()
    redis = Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
    publisher = Publisher(redis, PublisherSettings(retry_max_s=0.2), prefix="outage")
    publisher.start()
    try:
        publisher.submit(Sink.REQUESTS, _record(0))
        await _wait_for(lambda: publisher.published == 1)
        await asyncio.to_thread(server.stop)
        for i in range(1, 21):
            publisher.submit(Sink.REQUESTS, _record(i))
        await _wait_for(lambda: publisher.failures > 0)
        assert publisher.buffered == 20
        await asyncio.to_thread(server.start)
        await _wait_for(lambda: publisher.published == 21)
        assert await redis.xlen(stream_key(Sink.REQUESTS, "outage")) == 21
    finally:
        await publisher.stop()
        await redis.aclose()
