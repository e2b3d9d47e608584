"""Replay of the fallback spool into a real ClickHouse: every record lands once, whatever
happens to the replayers (two at once, one SIGKILLed mid-file) or to ClickHouse (stopped)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import msgspec
import pytest
from clickhouse_driver import Client

from devstack.servers import ClickHouseServer
from ingester.dead_letter import DeadLetterFile
from ingester.delivery import Delivery
from ingester.lock import lock_path, read_lock
from ingester.replay import Replayer, ReplayReport, ReplayStatus, pending_files
from ingester.schema import migrate
from shared.codec import encode_record
from shared.records import RequestRecord
from shared.settings import ClickHouseSettings
from shared.spool.reader import count_lines
from shared.spool.writer import SpoolWriter, read_dropped
from shared.streams import Sink

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SINK = Sink.REQUESTS


def _query(settings: ClickHouseSettings, sql: str) -> list[Any]:
    client = Client(host=settings.host, port=settings.port, connect_timeout=2)
    try:
        return list(client.execute(sql.format(db=settings.database)))
    finally:
        client.disconnect()


def _counts(settings: ClickHouseSettings) -> tuple[int, int]:
    ((count, unique),) = _query(
        settings, "SELECT count(), uniqExact(request_id) FROM {db}.requests FINAL"
    )
    return int(count), int(unique)


def _settings(server: ClickHouseServer) -> ClickHouseSettings:
    return ClickHouseSettings(
        port=server.port, database=f"replay_{uuid.uuid4().hex[:12]}", connect_timeout_s=1
    )


@pytest.fixture
def database(clickhouse_server: ClickHouseServer) -> Iterator[ClickHouseSettings]:
    settings = _settings(clickhouse_server)
    migrate(settings)
    yield settings
    _query(settings, "DROP DATABASE IF EXISTS {db}")


def _payloads(n: int, *, body: int = 300, start: int = 0) -> list[bytes]:
    run = uuid.uuid4().hex[:8]
    return [
        encode_record(
            RequestRecord(
                request_id=f"{run}-{i:08d}",
                org_id=f"org{i % 5}",
                api_key_id="key-1",
                created_at_ms=1_790_000_000_000 + i,
                model_requested="gpt-4o-mini",
                provider="openai",
                status_code=200,
                request_body="q" * body,
                response_body="a" * body,
                stage_latency_ms={"auth": 0.2, "provider": 120.5},
                properties={"n": str(i)},
                prompt_tokens=12,
                completion_tokens=40,
                total_tokens=52,
                cost_usd=0.0001,
            )
        )
        for i in range(start, start + n)
    ]


def _spool(directory: Path, payloads: list[bytes], *, batch: int = 500, cap: int = 2**30) -> None:
    """Spool ``payloads`` without losing any (the tests that want drops use the writer)."""
    writer = SpoolWriter(directory, SINK, cap_bytes=cap, generations=3)
    for i in range(0, len(payloads), batch):
        writer.append(payloads[i : i + batch])
    assert read_dropped(directory, SINK).records == 0, "test setup: the cap is too small"


def _delivery(settings: ClickHouseSettings, tmp_path: Path) -> Delivery:
    return Delivery(settings, tmp_path / "dead", attempts=2, backoff_s=0.05)


def _spooled_lines(directory: Path) -> int:
    return sum(count_lines(p) for p in pending_files(directory, SINK))


def test_replay_inserts_every_record_deletes_files_and_releases_the_lock(
    database: ClickHouseSettings, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    payloads = _payloads(3000)
    _spool(spool, payloads, cap=2 * 2**20)  # 3 generations of 2 batches, nothing dropped
    _spool(spool, [b"not a record"])
    assert len(pending_files(spool, SINK)) == 3
    delivery = _delivery(database, tmp_path)
    replayer = Replayer(spool, SINK, delivery, batch_records=700)

    dry = replayer.replay(dry_run=True)
    assert (dry.status, dry.records) == (ReplayStatus.DRY_RUN, 3001)
    assert dry.files == len(pending_files(spool, SINK))
    assert _counts(database) == (0, 0)

    seen: list[tuple[int, int]] = []
    report = replayer.replay(progress=lambda done, total: seen.append((done, total)))
    delivery.close()
    assert report.status is ReplayStatus.DONE
    assert (report.records, report.inserted, report.dead_lettered) == (3001, 3000, 1)
    assert report.files_done == report.files == dry.files
    assert _counts(database) == (3000, 3000)
    assert pending_files(spool, SINK) == []
    assert not lock_path(spool, SINK).exists()
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert seen[-1] == (dry.bytes, dry.bytes)


def _replay_once(
    spool: str, settings: ClickHouseSettings, dead: str, start: Barrier | None, out: Any
) -> None:
    delivery = Delivery(settings, Path(dead), attempts=2, backoff_s=0.05)
    replayer = Replayer(Path(spool), SINK, delivery, batch_records=1000, stale_after_s=0.3)
    if start is not None:
        start.wait()
    report = replayer.replay()
    delivery.close()
    if out is not None:
        out.put(report)


def test_two_replayers_at_once_never_double_or_lose_a_record(
    database: ClickHouseSettings, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    n = 20_000
    _spool(spool, _payloads(n), batch=1000, cap=16 * 2**20)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    args = (str(spool), database, str(tmp_path / "dead"), start, out)
    procs = [ctx.Process(target=_replay_once, args=args) for _ in range(2)]
    for p in procs:
        p.start()
    reports: list[ReplayReport] = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    statuses = sorted(r.status for r in reports)
    assert statuses in (
        [ReplayStatus.DONE, ReplayStatus.LOCKED],
        [ReplayStatus.DONE, ReplayStatus.DONE],  # took turns: the second found nothing left
    )
    assert sum(r.records for r in reports) == n, "a record was sent twice or never"
    assert _counts(database) == (n, n)
    assert pending_files(spool, SINK) == []
    assert not lock_path(spool, SINK).exists()


def test_a_sigkilled_replayer_is_taken_over_and_nothing_is_lost(
    database: ClickHouseSettings, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    n = 30_000
    _spool(spool, _payloads(n), batch=1000)
    ctx = multiprocessing.get_context("spawn")
    victim = ctx.Process(
        target=_replay_once, args=(str(spool), database, str(tmp_path / "dead"), None, None)
    )
    victim.start()
    deadline = time.monotonic() + 60
    while (state := read_lock(spool, SINK)) is None or state.offset == 0:
        assert victim.is_alive(), "the victim finished before its first confirmed batch"
        assert time.monotonic() < deadline, "no confirmed batch in time"
        time.sleep(0.01)
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    assert victim.exitcode == -signal.SIGKILL
    assert lock_path(spool, SINK).exists()

    delivery = _delivery(database, tmp_path)
    replayer = Replayer(spool, SINK, delivery, batch_records=1000, stale_after_s=0.3)
    while (report := replayer.replay()).status is ReplayStatus.LOCKED:
        assert time.monotonic() < deadline + 30, "the stale lock was never broken"
        time.sleep(0.1)
    delivery.close()
    assert report.status is ReplayStatus.DONE
    assert report.records < n, "the takeover should resume after the confirmed batches"
    assert _counts(database) == (n, n)
    assert pending_files(spool, SINK) == []
    assert not lock_path(spool, SINK).exists()


def _own_clickhouse(
    factory: Callable[[], ClickHouseServer],
) -> tuple[ClickHouseServer, ClickHouseSettings]:
    """A ClickHouse of the test's own (to stop or kill), migrated."""
    server = factory()
    settings = _settings(server)
    migrate(settings)
    return server, settings


def test_clickhouse_down_keeps_the_files_and_a_later_replay_finishes(
    clickhouse_factory: Callable[[], ClickHouseServer], tmp_path: Path
) -> None:
    server, settings = _own_clickhouse(clickhouse_factory)
    spool = tmp_path / "spool"
    n = 5000
    _spool(spool, _payloads(n), batch=1000, cap=4 * 2**20)
    delivery = _delivery(settings, tmp_path)
    replayer = Replayer(spool, SINK, delivery, batch_records=1000)

    server.stop()
    report = replayer.replay()
    assert report.status is ReplayStatus.UNAVAILABLE
    assert report.error
    assert (report.inserted, report.files_done) == (0, 0)
    assert _spooled_lines(spool) == n
    assert not lock_path(spool, SINK).exists()

    server.start()
    report = replayer.replay()
    delivery.close()
    assert report.status is ReplayStatus.DONE
    assert report.inserted == n
    assert _counts(settings) == (n, n)
    assert pending_files(spool, SINK) == []


def test_rotation_drops_are_counted_and_the_rest_replays(
    database: ClickHouseSettings, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    cap, generations = 64 * 1024, 3
    writer = SpoolWriter(spool, SINK, cap_bytes=cap, generations=generations)
    written = largest = 0
    for i in range(60):
        batch = _payloads(5 + i % 11, body=200, start=i * 100)
        writer.append(batch)
        written += len(batch)
        largest = max(largest, sum(len(p) + 1 for p in batch))
        sizes = [s for s in writer.sizes() if s is not None]
        assert sum(sizes) <= generations * cap
        assert all(s <= max(cap, largest) for s in sizes)
    dropped = read_dropped(spool, SINK)
    remaining = _spooled_lines(spool)
    assert dropped.records > 0
    assert dropped.records == written - remaining

    delivery = _delivery(database, tmp_path)
    report = Replayer(spool, SINK, delivery).replay()
    delivery.close()
    assert report.status is ReplayStatus.DONE
    assert _counts(database) == (remaining, remaining)


def _inserted_parts(settings: ClickHouseSettings) -> int:
    """Parts the inserts wrote (level 0), merged away or not."""
    ((parts,),) = _query(
        settings,
        "SELECT count() FROM system.parts WHERE database = '{db}' AND table = 'requests' "
        "AND level = 0",
    )
    return int(parts)


def test_a_replay_sends_insert_records_per_insert_a_batch_at_a_time(
    database: ClickHouseSettings, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    _spool(spool, _payloads(3200))
    delivery = _delivery(database, tmp_path)
    replayer = Replayer(spool, SINK, delivery, batch_records=400, insert_records=1200)
    report = replayer.replay()
    delivery.close()
    assert (report.status, report.inserted) == (ReplayStatus.DONE, 3200)
    assert _counts(database) == (3200, 3200)
    assert _inserted_parts(database) == 3  # 1,200 + 1,200 + 800: one part per insert
    assert delivery.counters.get("split_inserts") == 0


def test_poison_in_an_insert_of_several_batches_is_set_aside_and_the_rest_replayed(
    database: ClickHouseSettings, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    payloads = _payloads(3000)
    poison = msgspec.json.decode(payloads[1700]) | {"prompt_tokens": -5}
    payloads[1700] = msgspec.json.encode(poison)
    _spool(spool, payloads)
    delivery = _delivery(database, tmp_path)
    report = Replayer(spool, SINK, delivery, batch_records=500, insert_records=1500).replay()
    delivery.close()
    assert report.status is ReplayStatus.DONE
    assert (report.records, report.inserted, report.dead_lettered) == (3000, 2999, 1)
    assert delivery.counters.get("split_inserts") == 1  # the second insert, sent again
    assert _counts(database) == (2999, 2999)
    letters = list(DeadLetterFile(tmp_path / "dead", SINK).read())
    assert [letter.payload for letter in letters] == [payloads[1700]]
    assert pending_files(spool, SINK) == []


def test_clickhouse_killed_mid_replay_loses_and_doubles_nothing(
    clickhouse_factory: Callable[[], ClickHouseServer], tmp_path: Path
) -> None:
    server, settings = _own_clickhouse(clickhouse_factory)
    spool = tmp_path / "spool"
    n = 6000
    _spool(spool, _payloads(n), batch=1000)
    delivery = _delivery(settings, tmp_path)
    replayer = Replayer(spool, SINK, delivery, batch_records=500, insert_records=1500)

    def kill_after_the_first_insert(done: int, total: int) -> None:
        if server.process is not None and server.process.poll() is None:
            server.kill()

    report = replayer.replay(progress=kill_after_the_first_insert)
    assert report.status is ReplayStatus.UNAVAILABLE
    assert 0 < report.inserted < n
    assert pending_files(spool, SINK) != []

    server.start()
    report = replayer.replay()
    delivery.close()
    assert report.status is ReplayStatus.DONE
    assert _counts(settings) == (n, n)
    assert pending_files(spool, SINK) == []
