"""The bulk column writer (``ingester.native``) against clickhouse-driver's own writer: the same
bytes for the same columns, the same rows in ClickHouse, the same refusals."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from clickhouse_driver import Client, errors
from clickhouse_driver.block import ColumnOrientedBlock
from clickhouse_driver.bufferedwriter import BufferedSocketWriter
from clickhouse_driver.streams.native import BlockOutputStream

from devstack.servers import ClickHouseServer
from ingester.columns import build_columns
from ingester.native import write_block
from ingester.schema.ddl import TABLES, insert_columns
from ingester.schema.migrate import migrate
from ingester.sink import ClickHouseSink
from shared.codec import AnyRecord
from shared.records import BreakerEventRecord, RequestRecord, SpanRecord
from shared.settings import ClickHouseSettings
from shared.streams import Sink
from tests.integration.ingester.clickhouse_helpers import query, unique_settings

pytestmark = pytest.mark.integration

Types = list[tuple[str, str]]


@pytest.fixture
def context(clickhouse_server: ClickHouseServer) -> Iterator[Any]:
    """The driver's context of a live connection (server revision, client settings)."""
    client = Client(host="127.0.0.1", port=clickhouse_server.port)
    client.connection.force_connect()
    yield client.connection.context
    client.disconnect()


def _written(write: Callable[[Any], None]) -> bytes:
    """What ``write`` sends through a driver writer, read back from the other socket end."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.setblocking(False)
        chunks: list[bytes] = []
        out = BufferedSocketWriter(ours, 1 << 16)
        write(out)
        while True:
            try:
                chunk = theirs.recv(1 << 20)
            except BlockingIOError:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _driver_bytes(context: Any, types: Types, columns: Sequence[Sequence[Any]]) -> bytes:
    block = ColumnOrientedBlock(types, [list(c) for c in columns])
    return _written(lambda out: BlockOutputStream(out, context).write(block))


def _bulk_bytes(context: Any, types: Types, columns: Sequence[Sequence[Any]]) -> bytes:
    return _written(lambda out: write_block(out, context, types, columns))


def _types(sink: Sink) -> Types:
    spec = {c.name: c.type for c in TABLES[sink].columns}
    return [(name, spec[name]) for name in insert_columns(sink)]


def _requests() -> list[RequestRecord]:
    plain = RequestRecord(request_id="r0", org_id="o", api_key_id="k", created_at_ms=1)
    full = RequestRecord(
        request_id="r1",
        org_id="org ünïcødé ✓",
        api_key_id="k",
        created_at_ms=1_790_000_000_123,
        stream=True,
        status_code=65535,
        request_body='{"messages":[{"content":"héllo \\"quoted\\" \\u2603"}]}',
        latency_ms=1234.5678901234,
        stage_latency_ms={"auth": 0.1, "cache": 2.5, "provider": 1e-9},
        prompt_tokens=2**32 - 1,
        cost_usd=0.000123456789,
        firewall_score=0.25,
        cache_similarity=0.875,
        cache_lookup_ms={"exact": 0.5},
        firewall_categories=["violence", "pii"],
        properties={"plan": "pro", "région": "eu"},
        prompt_inputs={"name": ""},
        providers_tried=["openai", "anthropic"],
        request_headers={"x-a": "1"},
        response_headers={"x-b": "2", "x-c": "3"},
    )
    return [plain, full, plain]


_RECORDS: dict[Sink, list[AnyRecord]] = {
    Sink.REQUESTS: list(_requests()),
    Sink.SPANS: [
        SpanRecord(
            span_id="s",
            request_id="r",
            org_id="o",
            name="auth",
            created_at_ms=5_000,
            start_offset_ms=0.5,
            duration_ms=1.25,
            attributes={"hit": "yes"},
        )
    ],
    Sink.BREAKER_EVENTS: [
        BreakerEventRecord(
            event_id="e", provider="p", created_at_ms=9, from_state="closed", to_state="open"
        )
    ],
}


@pytest.mark.parametrize("sink", list(Sink))
def test_bulk_writer_writes_the_drivers_bytes(context: Any, sink: Sink) -> None:
    columns = build_columns(sink, _RECORDS[sink])
    expected = _driver_bytes(context, _types(sink), columns)
    assert _bulk_bytes(context, _types(sink), columns) == expected


def test_columns_of_empty_values_are_the_drivers_bytes(context: Any) -> None:
    types = [("s", "String"), ("a", "Array(String)"), ("f", "Array(Float64)")]
    columns = [("", "", ""), [[], {}, ()], [[], [], []]]
    assert _bulk_bytes(context, types, columns) == _driver_bytes(context, types, columns)


@pytest.mark.parametrize("column", [[None, None], ["", None], [b"", ""], [0, ""], ["", 1]])
def test_odd_values_in_a_string_column_fare_as_with_the_driver(
    context: Any, column: list[Any]
) -> None:
    """Written alike, or refused with the same exception type."""
    outcomes: list[bytes | type[Exception]] = []
    for write in (_driver_bytes, _bulk_bytes):
        try:
            outcomes.append(write(context, [("s", "String")], [column]))
        except Exception as exc:
            outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1]


def test_types_it_does_not_pack_are_written_by_the_driver(context: Any) -> None:
    types = [
        ("a", "LowCardinality(String)"),
        ("b", "Array(Array(UInt8))"),
        ("c", "Array(Nullable(String))"),
        ("d", "Nullable(UInt64)"),
        ("e", "Int16"),
    ]
    columns: list[list[Any]] = [
        ["x", "y", "x"],
        [[[1], []], [], [[2, 3]]],
        [["a", None], [], [None]],
        [None, 2**64 - 1, 0],
        [-5, 0, 32767],
    ]
    assert _bulk_bytes(context, types, columns) == _driver_bytes(context, types, columns)


@pytest.mark.parametrize(
    ("spec", "value"),
    [("UInt8", 300), ("UInt32", -1), ("Float32", 1e39), ("Float64", None), ("UInt64", 2**64)],
)
def test_a_value_the_column_cannot_hold_is_a_type_mismatch_naming_it(
    context: Any, spec: str, value: Any
) -> None:
    with pytest.raises(errors.TypeMismatchError, match=f"Column c \\({spec}\\)") as caught:
        _bulk_bytes(context, [("c", spec)], [[0, value]])
    assert caught.value.code == errors.ErrorCodes.TYPE_MISMATCH


def _select_all(sink: Sink) -> str:
    names = ", ".join(insert_columns(sink))  # not ingested_at: the server's now()
    return f"SELECT {names} FROM {{db}}.{TABLES[sink].name} ORDER BY {names}"


def test_both_writers_store_the_same_rows(clickhouse_server: ClickHouseServer) -> None:
    stored = []
    for bulk in (True, False):
        settings: ClickHouseSettings = unique_settings(clickhouse_server, bulk_writer=bulk)
        migrate(settings)
        sink = ClickHouseSink(settings)
        try:
            for s, records in _RECORDS.items():
                assert sink.insert(s, build_columns(s, records)) == len(records)
        finally:
            sink.close()
        stored.append([query(settings, _select_all(s)) for s in Sink])
    assert stored[0] == stored[1]
    assert len(stored[0][0]) == len(_RECORDS[Sink.REQUESTS])
