from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from devstack.servers import ClickHouseServer
from ingester.columns import build_columns
from ingester.schema.migrate import migrate
from ingester.sink import ClickHouseSink
from shared.codec import decode_record
from shared.errors import PoisonBatchError, SinkUnavailableError
from shared.settings import ClickHouseSettings
from shared.streams import Sink
from tests.integration.ingester.clickhouse_helpers import query, request_payload, unique_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(clickhouse_server: ClickHouseServer) -> ClickHouseSettings:
    settings = unique_settings(clickhouse_server)
    migrate(settings)
    return settings


@pytest.fixture
def sink(settings: ClickHouseSettings) -> Iterator[ClickHouseSink]:
    sink = ClickHouseSink(settings)
    yield sink
    sink.close()


def _columns(*payloads: bytes) -> list[list[object]]:
    records = [decode_record(Sink.REQUESTS, p) for p in payloads]
    return [list(c) for c in build_columns(Sink.REQUESTS, records)]


def test_insert_round_trips_values(sink: ClickHouseSink, settings: ClickHouseSettings) -> None:
    assert sink.insert(Sink.REQUESTS, _columns(request_payload(1), request_payload(2))) == 2
    rows = query(
        settings,
        "SELECT request_id, toUInt32(created_at), created_at_ms, property_keys, "
        "property_values, stage_names, cost_usd, firewall_score FROM {db}.requests FINAL "
        "ORDER BY created_at_ms",
    )
    assert rows[0][1:] == (1_790_000_000, 1_790_000_000_001, ["n"], ["1"], ["auth"], 0.001, None)
    assert [r[0] for r in rows] == [
        "00000000-0000-0000-0000-000000000001",
        "00000000-0000-0000-0000-000000000002",
    ]


def test_empty_batch_inserts_nothing(sink: ClickHouseSink) -> None:
    assert sink.insert(Sink.SPANS, build_columns(Sink.SPANS, [])) == 0


def test_out_of_range_value_is_poison_and_the_sink_still_works(
    sink: ClickHouseSink, settings: ClickHouseSettings
) -> None:
    with pytest.raises(PoisonBatchError, match="prompt_tokens"):
        sink.insert(Sink.REQUESTS, _columns(request_payload(1, prompt_tokens=-5)))
    assert sink.insert(Sink.REQUESTS, _columns(request_payload(2))) == 1
    assert query(settings, "SELECT count() FROM {db}.requests FINAL") == [(1,)]


def test_missing_table_is_transient_not_poison(clickhouse_server: ClickHouseServer) -> None:
    """Rows for a database not migrated yet are fine rows: spool them, don't dead-letter."""
    sink = ClickHouseSink(unique_settings(clickhouse_server))
    try:
        with pytest.raises(SinkUnavailableError):
            sink.insert(Sink.REQUESTS, _columns(request_payload(1)))
    finally:
        sink.close()


def test_unreachable_server_is_transient_and_ping_says_so(
    clickhouse_factory: Callable[[], ClickHouseServer],
) -> None:
    server: ClickHouseServer = clickhouse_factory()
    settings = unique_settings(server, connect_timeout_s=1.0)
    migrate(settings)
    sink = ClickHouseSink(settings)
    try:
        assert sink.ping()
        server.kill()
        assert not sink.ping()
        with pytest.raises(SinkUnavailableError):
            sink.insert(Sink.REQUESTS, _columns(request_payload(1)))
        server.start()
        assert sink.ping()
        assert sink.insert(Sink.REQUESTS, _columns(request_payload(1))) == 1
    finally:
        sink.close()
