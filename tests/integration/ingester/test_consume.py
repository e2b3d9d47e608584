"""The stream consumer against real Redis and ClickHouse: records in → rows out, acks, trimming,
poison entries, and the spool + replay path while ClickHouse is down."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import Error as ClickHouseError
from redis.asyncio import Redis

from devstack.servers import ClickHouseServer, RedisServer
from ingester.consume import StreamConsumer
from ingester.dead_letter import DeadLetterFile
from ingester.delivery import Delivery
from ingester.metrics import ConsumerCounter, Counters
from ingester.replay import pending_files
from ingester.schema import migrate
from ingester.settings import IngesterSettings
from ingester.worker import IngesterRuntime
from shared.codec import encode_record
from shared.records import RequestRecord
from shared.settings import ClickHouseSettings, RedisSettings
from shared.spool.reader import count_lines
from shared.spool.writer import SpoolWriter
from shared.streams import CONSUMER_GROUP, RECORD_FIELD, Sink, stream_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def make_settings(redis_url: str, ch_port: int, tmp: Path, **overrides: object) -> IngesterSettings:
    tag = uuid.uuid4().hex[:10]
    values: dict[str, object] = {
        "redis": RedisSettings(url=redis_url, key_prefix=f"t{tag}"),
        "clickhouse": ClickHouseSettings(
            port=ch_port, database=f"t_{tag}", connect_timeout_s=0.5, send_receive_timeout_s=3
        ),
        "spool_dir": tmp / "spool",
        "dead_letter_dir": tmp / "dead",
        "batch_records": 50,
        "batch_age_s": 0.2,
        "read_block_ms": 200,
        "insert_attempts": 2,
        "insert_backoff_s": 0.05,
        "claim_min_idle_s": 60.0,
        "claim_interval_s": 0.5,
        "trim_interval_s": 0.2,
        "replay_check_interval_s": 0.3,
        "error_backoff_s": 0.2,
        **overrides,
    }
    return IngesterSettings(**values)  # type: ignore[arg-type]


def record_payload() -> bytes:
    record = RequestRecord(
        request_id=str(uuid.uuid4()),
        org_id="org-1",
        api_key_id="key-1",
        created_at_ms=int(time.time() * 1000),
        model_requested="gpt-4o-mini",
        status_code=200,
    )
    return encode_record(record)


async def publish(redis: Redis, key: str, n: int) -> None:
    pipe = redis.pipeline(transaction=False)
    for _ in range(n):
        pipe.xadd(key, {RECORD_FIELD: record_payload()})
    await pipe.execute()


def counts(settings: IngesterSettings) -> tuple[int, int]:
    """(rows, distinct request ids) as queries see them."""
    client = Client(host="127.0.0.1", port=settings.clickhouse.port)
    try:
        db = settings.clickhouse.database
        rows = client.execute(f"SELECT count(), uniqExact(request_id) FROM {db}.requests FINAL")
        return int(rows[0][0]), int(rows[0][1])
    finally:
        client.disconnect()


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


@pytest.fixture
def settings(
    redis_server: RedisServer, clickhouse_server: ClickHouseServer, tmp_path: Path
) -> Iterator[IngesterSettings]:
    settings = make_settings(redis_server.url, clickhouse_server.port, tmp_path)
    migrate(settings.clickhouse)
    yield settings
    client = Client(host="127.0.0.1", port=clickhouse_server.port)
    client.execute(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
    client.disconnect()


@pytest.fixture
async def redis(settings: IngesterSettings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis.url)
    yield client
    await client.aclose()


async def run_consumer(
    redis: Redis, settings: IngesterSettings, counters: Counters
) -> tuple[StreamConsumer, asyncio.Task[None], Deliveries]:
    deliveries = Deliveries(
        Delivery(settings.clickhouse, settings.dead_letter_dir, attempts=2, backoff_s=0.05)
        for _ in range(2)
    )
    spool = SpoolWriter(settings.spool_dir, Sink.REQUESTS)
    consumer = StreamConsumer(
        redis,
        Sink.REQUESTS,
        deliveries=deliveries,
        spool=spool,
        settings=settings,
        counters=counters,
    )
    return consumer, asyncio.create_task(consumer.run()), deliveries


class Deliveries(tuple[Delivery, ...]):
    """A consumer's two deliveries (two connections), closed together."""

    def close(self) -> None:
        for delivery in self:
            delivery.close()


async def consume_until_acked(redis: Redis, settings: IngesterSettings, acked: int) -> Counters:
    """Run a consumer until it acknowledged ``acked`` entries, then stop it; its counters."""
    counters = Counters()
    consumer, task, delivery = await run_consumer(redis, settings, counters)

    async def settled() -> bool:
        return counters.get(Sink.REQUESTS, ConsumerCounter.ACKED) == acked

    await eventually(settled)
    consumer.stop()
    await task
    delivery.close()
    return counters


async def test_records_become_rows_acked_and_trimmed(
    redis: Redis, settings: IngesterSettings
) -> None:
    key = stream_key(Sink.REQUESTS, settings.redis.key_prefix)
    counters = Counters()
    consumer, task, delivery = await run_consumer(redis, settings, counters)
    n = 430  # several full batches of 50 and one flushed by age
    await publish(redis, key, n)

    async def all_in() -> bool:
        return await asyncio.to_thread(counts, settings) == (n, n)

    await eventually(all_in)

    async def trimmed() -> bool:
        return int(await redis.xlen(key)) == 0

    await eventually(trimmed)
    consumer.stop()
    await task
    delivery.close()
    pending = await redis.xpending(key, CONSUMER_GROUP)
    assert pending["pending"] == 0
    assert counters.get(Sink.REQUESTS, ConsumerCounter.ACKED) == n
    assert counters.get(Sink.REQUESTS, ConsumerCounter.INSERTED) == n
    assert counters.get(Sink.REQUESTS, ConsumerCounter.TRIMMED) == n


async def test_trim_keeps_unacked_entries(redis: Redis, settings: IngesterSettings) -> None:
    """Entries another consumer holds unacked survive the trim; delivered+acked ones go."""
    key = stream_key(Sink.REQUESTS, settings.redis.key_prefix)
    await redis.xgroup_create(key, CONSUMER_GROUP, id="0", mkstream=True)
    await publish(redis, key, 5)
    held = await redis.xreadgroup(CONSUMER_GROUP, "other", {key: ">"}, count=5)
    held_ids = [entry_id for entry_id, _ in held[0][1]]
    await publish(redis, key, 20)
    counters = Counters()
    consumer, task, delivery = await run_consumer(redis, settings, counters)

    async def ours_trimmed() -> bool:
        return counters.get(Sink.REQUESTS, ConsumerCounter.ACKED) == 20 and (
            counters.get(Sink.REQUESTS, ConsumerCounter.TRIMS) > 1
        )

    await eventually(ours_trimmed)
    consumer.stop()
    await task
    delivery.close()
    remaining = [entry_id for entry_id, _ in await redis.xrange(key)]
    # everything from the oldest unacked entry on is kept: held ones are never trimmed
    assert remaining[:5] == held_ids
    assert counts(settings) == (20, 20)


async def test_entry_without_record_is_dead_lettered_and_acked(
    redis: Redis, settings: IngesterSettings
) -> None:
    key = stream_key(Sink.REQUESTS, settings.redis.key_prefix)
    counters = Counters()
    consumer, task, delivery = await run_consumer(redis, settings, counters)
    await redis.xadd(key, {b"not-r": b"junk"})
    await redis.xadd(key, {RECORD_FIELD: b"{not json"})
    await publish(redis, key, 3)

    async def settled() -> bool:
        return counters.get(Sink.REQUESTS, ConsumerCounter.ACKED) == 5

    await eventually(settled)
    consumer.stop()
    await task
    delivery.close()
    letters = list(DeadLetterFile(settings.dead_letter_dir, Sink.REQUESTS).read())
    assert len(letters) == 2
    assert any(b"not-r" in letter.payload for letter in letters)
    assert counts(settings) == (3, 3)
    assert (await redis.xpending(key, CONSUMER_GROUP))["pending"] == 0


async def test_restarted_consumer_resumes_its_own_pending_entries(
    redis: Redis, settings: IngesterSettings
) -> None:
    key = stream_key(Sink.REQUESTS, settings.redis.key_prefix)
    await redis.xgroup_create(key, CONSUMER_GROUP, id="0", mkstream=True)
    await publish(redis, key, 12)
    # a previous life of this consumer read them and died before acking
    await redis.xreadgroup(CONSUMER_GROUP, settings.consumer_name, {key: ">"}, count=100)
    counters = await consume_until_acked(redis, settings, 12)
    assert counters.get(Sink.REQUESTS, ConsumerCounter.CLAIMED) == 0  # resumed, not claimed
    assert counts(settings) == (12, 12)


async def test_spool_failure_leaves_entries_pending(
    redis: Redis, settings: IngesterSettings, tmp_path: Path
) -> None:
    """ClickHouse unreachable and the spool unwritable: nothing is acked."""
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    broken = settings.model_copy(
        update={
            "clickhouse": settings.clickhouse.model_copy(update={"port": 1}),
            "spool_dir": blocked / "spool",
        }
    )
    key = stream_key(Sink.REQUESTS, settings.redis.key_prefix)
    counters = Counters()
    consumer, task, delivery = await run_consumer(redis, broken, counters)
    await publish(redis, key, 7)

    async def failed() -> bool:
        return counters.get(Sink.REQUESTS, ConsumerCounter.SPOOL_FAILURES) >= 1

    await eventually(failed)
    consumer.stop()
    await task
    delivery.close()
    assert counters.get(Sink.REQUESTS, ConsumerCounter.ACKED) == 0
    assert (await redis.xpending(key, CONSUMER_GROUP))["pending"] == 7


async def test_clickhouse_outage_spools_then_replays(
    redis_server: RedisServer,
    clickhouse_factory: Callable[[], ClickHouseServer],
    tmp_path: Path,
) -> None:
    clickhouse = clickhouse_factory()
    settings = make_settings(redis_server.url, clickhouse.port, tmp_path)
    runtime = IngesterRuntime(settings)
    await runtime.start((Sink.REQUESTS,))  # migrates while ClickHouse is up
    redis = Redis.from_url(settings.redis.url)
    key = stream_key(Sink.REQUESTS, settings.redis.key_prefix)
    try:
        await publish(redis, key, 100)
        await eventually(lambda: _equals(counts, settings, (100, 100)))
        await asyncio.to_thread(clickhouse.stop)
        n_down = 240
        for _ in range(4):
            await publish(redis, key, n_down // 4)
            await asyncio.sleep(0.1)

        async def spooled() -> bool:
            return runtime.counters.get(Sink.REQUESTS, ConsumerCounter.SPOOLED) == n_down

        await eventually(spooled)
        assert (await redis.xpending(key, CONSUMER_GROUP))["pending"] == 0  # acked once spooled
        spooled_lines = sum(
            count_lines(p) for p in pending_files(settings.spool_dir, Sink.REQUESTS)
        )
        assert spooled_lines == n_down
        await asyncio.to_thread(clickhouse.start)
        total = 100 + n_down
        await eventually(lambda: _equals(counts, settings, (total, total)))
    finally:
        await runtime.stop()
        await redis.aclose()
    assert runtime.counters.get(Sink.REQUESTS, ConsumerCounter.REPLAYS) >= 1


async def _equals(
    fetch: Callable[[IngesterSettings], tuple[int, int]],
    settings: IngesterSettings,
    expected: tuple[int, int],
) -> bool:
    try:
        return await asyncio.to_thread(fetch, settings) == expected
    except (OSError, EOFError, ClickHouseError):
        return False


async def test_stop_flushes_and_acks_the_batch_in_hand(
    redis: Redis, settings: IngesterSettings
) -> None:
    patient = settings.model_copy(update={"batch_age_s": 30.0, "batch_records": 10_000})
    key = stream_key(Sink.REQUESTS, settings.redis.key_prefix)
    counters = Counters()
    consumer, task, delivery = await run_consumer(redis, patient, counters)
    await publish(redis, key, 9)

    async def held() -> bool:
        return counters.get(Sink.REQUESTS, ConsumerCounter.READ) == 9

    await eventually(held)
    assert counters.get(Sink.REQUESTS, ConsumerCounter.ACKED) == 0  # still young: held
    consumer.stop()
    await task
    delivery.close()
    assert counters.get(Sink.REQUESTS, ConsumerCounter.ACKED) == 9
    assert counts(settings) == (9, 9)
    assert (await redis.xpending(key, CONSUMER_GROUP))["pending"] == 0


async def test_requeued_dead_letters_become_rows_and_poison_comes_back(
    redis: Redis, settings: IngesterSettings
) -> None:
    """What an older ingester set aside (here: good records, as if it could not read them)
    goes back through the stream once requeued; what is still poison is set aside again."""
    import redis as sync_redis

    from ingester.dead_letter import DeadLetter
    from ingester.requeue import requeue

    good = [record_payload() for _ in range(7)]
    letters = DeadLetterFile(settings.dead_letter_dir, Sink.REQUESTS)
    letters.append([DeadLetter(p, "RecordDecodeError: unknown shape") for p in good])
    letters.append([DeadLetter(b"{still poison", "RecordDecodeError: not JSON")])
    client = sync_redis.Redis.from_url(settings.redis.url)
    try:
        done = requeue(client, settings.dead_letter_dir, Sink.REQUESTS, settings.redis.key_prefix)
    finally:
        client.close()
    assert done.letters == 8
    assert not letters.path.exists()  # moved aside: only the consumer's new letters land there

    await consume_until_acked(redis, settings, 8)
    assert counts(settings) == (7, 7)
    assert [letter.payload for letter in letters.read()] == [b"{still poison"]
    assert [p.name.split(".dead.")[1][:9] for p in done.files] == ["requeued-"]


def inserted_parts(settings: IngesterSettings) -> int:
    """Parts the inserts wrote (level 0), merged away or not."""
    client = Client(host="127.0.0.1", port=settings.clickhouse.port)
    try:
        rows = client.execute(
            "SELECT count() FROM system.parts WHERE database = %(db)s AND table = 'requests' "
            "AND level = 0",
            {"db": settings.clickhouse.database},
        )
        return int(rows[0][0])
    finally:
        client.disconnect()


@pytest.fixture
def grouping(
    redis_server: RedisServer, clickhouse_server: ClickHouseServer, tmp_path: Path
) -> IngesterSettings:
    """Inserts of five batches of 50, closed by size rather than age in these tests."""
    settings = make_settings(
        redis_server.url, clickhouse_server.port, tmp_path, batch_age_s=2.0, insert_records=250
    )
    migrate(settings.clickhouse)
    return settings


async def test_a_backlog_goes_in_inserts_of_insert_records(
    redis: Redis, grouping: IngesterSettings
) -> None:
    settings = grouping
    key = stream_key(Sink.REQUESTS, settings.redis.key_prefix)
    await publish(redis, key, 500)  # a backlog: ten full batches of 50
    counters = await consume_until_acked(redis, settings, 500)
    assert counts(settings) == (500, 500)
    assert counters.get(Sink.REQUESTS, ConsumerCounter.INSERTED) == 500
    assert inserted_parts(settings) == 2  # 250 + 250, each batch sent as it was flushed


async def test_poison_in_an_insert_of_several_batches_is_set_aside_alone(
    redis: Redis, grouping: IngesterSettings
) -> None:
    settings = grouping
    key = stream_key(Sink.REQUESTS, settings.redis.key_prefix)
    await publish(redis, key, 120)
    poison = msgspec.json.decode(record_payload()) | {"prompt_tokens": -5}
    await redis.xadd(key, {RECORD_FIELD: msgspec.json.encode(poison)})
    await publish(redis, key, 129)
    counters = await consume_until_acked(redis, settings, 250)
    assert counts(settings) == (249, 249)
    assert counters.get(Sink.REQUESTS, ConsumerCounter.INSERTED) == 249
    assert counters.get(Sink.REQUESTS, ConsumerCounter.DEAD_LETTERED) == 1
    letters = list(DeadLetterFile(settings.dead_letter_dir, Sink.REQUESTS).read())
    assert [msgspec.json.decode(letter.payload)["prompt_tokens"] for letter in letters] == [-5]


async def test_many_consumers_draining_backlogs_at_once_all_finish(
    redis: Redis, grouping: IngesterSettings
) -> None:
    """More open inserts than asyncio's shared pool has threads (min(32, cores + 4)): each
    consumer's senders have threads of their own, so no consumer waits for another's."""
    settings = grouping
    shards = (os.cpu_count() or 1) + 5
    for shard in range(shards):
        await publish(redis, stream_key(Sink.REQUESTS, settings.redis.key_prefix, shard), 300)
    counters = Counters()
    spool = SpoolWriter(settings.spool_dir, Sink.REQUESTS)
    deliveries = Deliveries(
        Delivery(settings.clickhouse, settings.dead_letter_dir) for _ in range(2 * shards)
    )
    consumers = [
        StreamConsumer(
            redis,
            Sink.REQUESTS,
            deliveries=deliveries[2 * shard : 2 * shard + 2],
            spool=spool,
            settings=settings,
            counters=counters,
            shard=shard,
        )
        for shard in range(shards)
    ]
    tasks = [asyncio.create_task(consumer.run()) for consumer in consumers]

    async def all_in() -> bool:
        return counters.get(Sink.REQUESTS, ConsumerCounter.ACKED) == 300 * shards

    try:
        await eventually(all_in, timeout_s=60)
    finally:
        for consumer in consumers:
            consumer.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        deliveries.close()
    assert counts(settings) == (300 * shards, 300 * shards)
