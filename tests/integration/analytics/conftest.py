"""Analytics tests: a migrated database with rollup tables on the session's real ClickHouse,
records delivered through the ingester's real ``Delivery``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from devstack.servers import ClickHouseServer
from devstack.synthetic import DatasetShape, generate, spans_for
from ingester.delivery import Delivery
from ingester.rollups import Rollups, ensure_rollup_tables
from ingester.schema.migrate import migrate
from shared.clickhouse_client import clickhouse_client
from shared.codec import encode_record
from shared.records import RequestRecord
from shared.settings import ClickHouseSettings
from shared.streams import Sink

Deliver = Callable[[Iterable[RequestRecord]], None]


def new_database(server: ClickHouseServer) -> ClickHouseSettings:
    settings = ClickHouseSettings(
        port=server.port, database=f"t_{uuid.uuid4().hex[:12]}", send_receive_timeout_s=120
    )
    migrate(settings)
    client = clickhouse_client(settings)
    try:
        ensure_rollup_tables(client, settings.database)
    finally:
        client.disconnect()
    return settings


def drop_database(settings: ClickHouseSettings) -> None:
    client = clickhouse_client(settings)
    try:
        client.execute(f"DROP DATABASE IF EXISTS `{settings.database}`")
    finally:
        client.disconnect()


def recent_shape(**kw: object) -> DatasetShape:
    """A window ending an hour ago, inside every default retention."""
    days = int(kw.pop("days", 3))  # type: ignore[call-overload]
    start = (int(time.time()) // 3600 * 3600 - days * 86400 - 3600) * 1000
    return DatasetShape(start_ms=start, span_s=days * 86400, **kw)  # type: ignore[arg-type]


@pytest.fixture
def ch(clickhouse_server: ClickHouseServer) -> Iterator[ClickHouseSettings]:
    settings = new_database(clickhouse_server)
    yield settings
    drop_database(settings)


def make_deliver(settings: ClickHouseSettings, dead_letter_dir: Path) -> tuple[Deliver, Delivery]:
    delivery = Delivery(settings, dead_letter_dir)

    def deliver(records: Iterable[RequestRecord]) -> None:
        batch = list(records)
        report = delivery.deliver(Sink.REQUESTS, [encode_record(r) for r in batch])
        assert report.inserted == len(batch) and report.dead_lettered == 0
        spans = [s for r in batch for s in spans_for(r)]
        delivery.deliver(Sink.SPANS, [encode_record(s) for s in spans])

    return deliver, delivery


@pytest.fixture
def deliver(ch: ClickHouseSettings, tmp_path: Path) -> Iterator[Deliver]:
    fn, delivery = make_deliver(ch, tmp_path / "dead")
    yield fn
    delivery.close()


@pytest.fixture
def rollups(ch: ClickHouseSettings) -> Iterator[Rollups]:
    r = Rollups(ch, overlap_s=0)
    yield r
    r.close()


def dataset(n: int, seed: int = 11, **shape: object) -> list[RequestRecord]:
    return list(generate(n, recent_shape(**shape), seed=seed))
