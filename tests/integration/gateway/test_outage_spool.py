"""The gateway's outage spool against real Redis: records past the grace go to disk, a later
publisher on the same directory drains them exactly once, a drain that dies resumes after the
batches Redis took, one drainer per directory at a time, and spooled usage counts once, even when
Redis ran the batch the gateway gave up on."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from devstack.servers import RedisServer
from gateway.clients.outage_spool import USAGE, OutageSpool
from gateway.clients.publisher import Publisher
from gateway.clients.ratelimiter import RateLimiter
from gateway.clients.usage import UsageRecorder
from gateway.clients.usage_counters import UsageCounters
from gateway.settings import PublisherSettings, SpoolSettings
from shared.codec import decode_record, encode_record
from shared.records import RequestRecord, SpanRecord
from shared.spool.writer import pending_files
from shared.streams import RECORD_FIELD, Sink, stream_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

NAMES = [sink.value for sink in Sink] + [USAGE]


def _record(i: int) -> bytes:
    return encode_record(
        RequestRecord(
            request_id=f"r{i}", org_id="o", api_key_id="k", created_at_ms=1_700_000_000_000 + i
        )
    )


def _span(i: int) -> bytes:
    return encode_record(
        SpanRecord(
            span_id=f"s{i}",
            request_id=f"r{i}",
            org_id="o",
            name="dispatch",
            created_at_ms=1_700_000_000_000 + i,
            start_offset_ms=0.0,
            duration_ms=1.0,
        )
    )


def _spool(directory: Path, prefix: str, **overrides: Any) -> OutageSpool:
    settings = SpoolSettings(dir=directory, grace_s=0.2, interval_s=0.05, **overrides)
    return OutageSpool.open(settings, NAMES, prefix=prefix)


async def _wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - counters of a task, not an event
            await asyncio.sleep(0.02)


async def _request_ids(redis: Redis, prefix: str) -> list[str]:
    entries = await redis.xrange(stream_key(Sink.REQUESTS, prefix))
    return [decode_record(Sink.REQUESTS, f[RECORD_FIELD]).request_id for _, f in entries]


@contextlib.contextmanager
def _stopped(server: RedisServer) -> Iterator[None]:
    server.stop()
    try:
        yield
    finally:
        server.start()


@pytest.fixture
async def stoppable(
    redis_factory: Callable[[], RedisServer],
) -> AsyncIterator[tuple[RedisServer, Redis, str]]:
    """A Redis of the test's own (to stop), a client that gives up fast, a key prefix."""
    server = redis_factory()
    redis = Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    yield server, redis, f"t{uuid.uuid4().hex[:8]}"
    await redis.aclose()


async def test_an_outage_goes_to_disk_and_the_next_publisher_drains_it_once(
    stoppable: tuple[RedisServer, Redis, str], tmp_path: Path
) -> None:
    server, redis, prefix = stoppable
    settings = PublisherSettings(retry_max_s=0.2)
    first = Publisher(redis, settings, prefix=prefix, spool=_spool(tmp_path, prefix))
    first.start()
    await asyncio.to_thread(server.stop)
    for i in range(300):
        first.submit(Sink.REQUESTS, _record(i))
        first.submit(Sink.SPANS, _span(i))
    await _wait_for(lambda: first.spooled == 600 and first.buffered == 0)
    assert first.dropped == 0
    first._drain._task.cancel()  # type: ignore[union-attr]  # the worker dies: no stop(), no flush
    assert pending_files(tmp_path, "requests") and pending_files(tmp_path, "spans")

    await asyncio.to_thread(server.start)
    second = Publisher(redis, settings, prefix=prefix, spool=_spool(tmp_path, prefix))
    second.start()
    try:
        await _wait_for(lambda: second.unspooled == 600)
        assert await _request_ids(redis, prefix) == [f"r{i}" for i in range(300)]
        assert await redis.xlen(stream_key(Sink.SPANS, prefix)) == 300
        assert not pending_files(tmp_path, "requests") and not pending_files(tmp_path, "spans")
        assert await redis.keys(f"{prefix}:gateway-spool:*") == []
    finally:
        await second.stop()


async def test_a_drain_that_dies_resumes_after_the_batches_redis_took(
    redis: Redis, prefix: str, tmp_path: Path
) -> None:
    spool = _spool(tmp_path, prefix, batch_records=100)
    spool.append("requests", [_record(i) for i in range(250)])
    publisher = Publisher(redis, PublisherSettings(), prefix=prefix, spool=spool)
    calls = 0
    deliver = publisher.drains["requests"]

    async def dies_after_one_batch(payloads: list[bytes], key: str, end: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("the worker dies here")
        await deliver(payloads, key, end)

    with pytest.raises(ConnectionError):
        await spool.drain(redis, {"requests": dies_after_one_batch})
    assert await _request_ids(redis, prefix) == [f"r{i}" for i in range(100)]
    assert spool.pending

    later = _spool(tmp_path, prefix, batch_records=100)  # the next worker on the volume
    assert await later.drain(redis, {"requests": deliver}) == 150
    assert await _request_ids(redis, prefix) == [f"r{i}" for i in range(250)]
    assert not pending_files(tmp_path, "requests")


async def test_one_drainer_per_directory_at_a_time(
    redis: Redis, prefix: str, tmp_path: Path
) -> None:
    one, other = _spool(tmp_path, prefix), _spool(tmp_path, prefix)
    one.append("requests", [_record(i) for i in range(10)])
    publisher = Publisher(redis, PublisherSettings(), prefix=prefix, spool=one)
    deliver = publisher.drains["requests"]
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(payloads: list[bytes], key: str, end: int) -> None:
        entered.set()
        await release.wait()
        await deliver(payloads, key, end)

    first = asyncio.create_task(one.drain(redis, {"requests": slow}))
    await entered.wait()
    assert await other.drain(redis, {"requests": deliver}) == 0, "the directory is being drained"
    release.set()
    assert await first == 10
    assert await _request_ids(redis, prefix) == [f"r{i}" for i in range(10)]


@pytest.mark.parametrize("spooled", [False, True], ids=["retried", "spooled"])
async def test_records_redis_ran_after_the_publisher_gave_up_are_added_once(
    stoppable: tuple[RedisServer, Redis, str], tmp_path: Path, spooled: bool
) -> None:
    """Redis hung (SIGSTOP): every try waits in a socket until the publisher times out; the
    records go back to the buffer (and, past the grace, to the spool). When Redis resumes it
    runs each try it was sent, then the publisher sends the records again: the fences let
    each record into its stream once."""
    server, redis, prefix = stoppable
    spool = _spool(tmp_path, prefix) if spooled else None
    publisher = Publisher(redis, PublisherSettings(retry_max_s=0.2), prefix=prefix, spool=spool)
    publisher.start()
    try:
        for i in range(10):
            publisher.submit(Sink.REQUESTS, _record(i))
        await _wait_for(lambda: publisher.published == 10)
        with server.hung():
            for i in range(10, 40):
                publisher.submit(Sink.REQUESTS, _record(i))
                publisher.submit(Sink.SPANS, _span(i))
            await _wait_for(lambda: publisher.spooled == 60 if spooled else publisher.failures >= 2)
            tried = publisher.failures
            for i in range(40, 50):
                publisher.submit(Sink.REQUESTS, _record(i))
                publisher.submit(Sink.SPANS, _span(i))
            await _wait_for(lambda: publisher.failures > tried)  # these were sent too
        await _wait_for(
            lambda: (
                publisher.buffered == 0
                and not pending_files(tmp_path, "requests")
                and not pending_files(tmp_path, "spans")
            )
        )
        assert sorted(await _request_ids(redis, prefix), key=lambda r: int(r[1:])) == [
            f"r{i}" for i in range(50)
        ]
        assert await redis.xlen(stream_key(Sink.SPANS, prefix)) == 40
        assert publisher.deduplicated > 0, "Redis ran a try the publisher had given up on"
    finally:
        await publisher.stop()


async def test_a_drained_batch_redis_runs_after_the_next_pass_read_the_offset_is_added_once(
    redis: Redis, prefix: str, tmp_path: Path
) -> None:
    """A hung Redis runs what waited in its socket when it resumes, in no set order across
    connections: the next pass may read the file's offset first and send the batch again."""
    spool = _spool(tmp_path, prefix, batch_records=100)
    publisher = Publisher(redis, PublisherSettings(), prefix=prefix, spool=spool)
    for i in range(150):
        publisher.submit(Sink.REQUESTS, _record(i))
    assert await publisher.spool_buffer() == 150
    deliver = publisher.drains["requests"]
    waiting: list[Awaitable[None]] = []

    async def given_up_on(payloads: list[bytes], key: str, end: int) -> None:
        waiting.append(deliver(payloads, key, end))  # sent, not yet run
        raise TimeoutError("Timeout reading from socket")

    with pytest.raises(TimeoutError):
        await spool.drain(redis, {"requests": given_up_on})
    assert await spool.drain(redis, {"requests": deliver}) == 150
    await waiting.pop()  # Redis resumes and runs it
    assert await _request_ids(redis, prefix) == [f"r{i}" for i in range(150)]
    assert publisher.deduplicated == 100


async def test_records_sent_after_a_spool_do_not_hold_back_the_spooled_ones(
    redis: Redis, prefix: str, tmp_path: Path
) -> None:
    """The live buffer goes before the spool when Redis answers again: its records' fences
    must not be the spooled records'."""
    publisher = Publisher(redis, PublisherSettings(), prefix=prefix, spool=_spool(tmp_path, prefix))
    for i in range(20):
        publisher.submit(Sink.REQUESTS, _record(i))
    assert await publisher.spool_buffer() == 20
    for i in range(20, 30):
        publisher.submit(Sink.REQUESTS, _record(i))
    publisher.start()
    try:
        await _wait_for(lambda: publisher.published == 10 and publisher.unspooled == 20)
        assert sorted(await _request_ids(redis, prefix), key=lambda r: int(r[1:])) == [
            f"r{i}" for i in range(30)
        ]
        assert publisher.deduplicated == 0
    finally:
        await publisher.stop()


@pytest.mark.parametrize("outage", ["stopped", "hung"])
async def test_spooled_usage_is_counted_once_when_redis_answers(
    stoppable: tuple[RedisServer, Redis, str], tmp_path: Path, outage: str
) -> None:
    """Redis stopped: the batch never reached it. Redis hung (SIGSTOP): the batch waits in its
    socket, the recorder times out and spools it, then Redis resumes and runs it, so the
    replay of the spooled copy must add nothing."""
    server, redis, prefix = stoppable
    spool = _spool(tmp_path, prefix)
    counters = UsageCounters(redis, prefix=prefix)
    recorder = UsageRecorder(counters, RateLimiter(redis), spool=spool)
    recorder.start()
    now_ms = int(time.time() * 1000)  # the counters expire at the end of now_ms's day
    try:
        recorder.submit("key-1", 10, 0.5, now_ms)
        await _wait_for(lambda: recorder.written == 1)
        with server.hung() if outage == "hung" else _stopped(server):
            for _ in range(40):
                recorder.submit("key-1", 7, 0.25, now_ms)
            await _wait_for(lambda: recorder.spooled == 40)
            assert recorder.lost == 0
        publisher = Publisher(redis, PublisherSettings(), prefix=prefix, spool=spool)
        publisher.drains[USAGE] = recorder.replay
        assert await spool.drain(redis, publisher.drains) == 40
        assert await spool.drain(redis, publisher.drains) == 0, "nothing is replayed twice"
        ran_by_redis = 40 if outage == "hung" else 0
        assert (recorder.replayed, recorder.deduplicated) == (40, ran_by_redis)
        usage = await counters.usage("key-1", now_ms)
        assert usage.day_tokens == 10 + 40 * 7
        assert usage.month_cost_usd == pytest.approx(0.5 + 40 * 0.25)
    finally:
        await recorder.stop()


async def test_usage_spooled_by_an_older_gateway_is_replayed_as_it_was(
    stoppable: tuple[RedisServer, Redis, str], tmp_path: Path
) -> None:
    """Lines without an identity (spooled before entries had one) are counted as sent, once
    each: the file's offset is set with them in one transaction."""
    _, redis, prefix = stoppable
    spool = _spool(tmp_path, prefix)
    now_ms = int(time.time() * 1000)
    old = f'{{"key_id":"key-1","tokens":5,"cost_usd":0.125,"now_ms":{now_ms},"org_id":""}}'
    spool.append(USAGE, [old.encode()] * 3)
    counters = UsageCounters(redis, prefix=prefix)
    recorder = UsageRecorder(counters, RateLimiter(redis), spool=spool)
    publisher = Publisher(redis, PublisherSettings(), prefix=prefix, spool=spool)
    publisher.drains[USAGE] = recorder.replay
    assert await spool.drain(redis, publisher.drains) == 3
    assert await spool.drain(redis, publisher.drains) == 0
    usage = await counters.usage("key-1", now_ms)
    assert (usage.day_tokens, usage.day_cost_usd) == (15, 0.375)
    assert (recorder.replayed, recorder.deduplicated) == (3, 0)
