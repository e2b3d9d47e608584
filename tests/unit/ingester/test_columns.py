from __future__ import annotations

from typing import Any

import pytest

from ingester.columns import build_columns, invalid_rows
from ingester.schema.ddl import insert_columns
from shared.codec import AnyRecord
from shared.records import BreakerEventRecord, RequestRecord, SpanRecord
from shared.streams import Sink


def _request(**overrides: Any) -> RequestRecord:
    fields: dict[str, Any] = {
        "request_id": "r1",
        "org_id": "o1",
        "api_key_id": "k1",
        "created_at_ms": 1_700_000_000_123,
    }
    return RequestRecord(**(fields | overrides))


def _rows(sink: Sink, records: list[AnyRecord]) -> list[dict[str, Any]]:
    columns = build_columns(sink, records)
    names = insert_columns(sink)
    assert len(columns) == len(names)
    assert all(len(c) == len(records) for c in columns)
    return [
        {name: column[i] for name, column in zip(names, columns, strict=True)}
        for i in range(len(records))
    ]


def test_request_columns() -> None:
    record = _request(
        stream=True,
        stage_latency_ms={"auth": 0.5, "cache": 1.25},
        properties={"team": "search", "env": "prod"},
        prompt_inputs={"name": "Ada"},
        cost_usd=0.002,
        providers_tried=["openai", "anthropic"],
    )
    (row,) = _rows(Sink.REQUESTS, [record])
    assert row["created_at"] == 1_700_000_000
    assert row["created_at_ms"] == 1_700_000_000_123
    assert list(row["stage_names"]) == ["auth", "cache"]
    assert list(row["stage_latency_ms"]) == [0.5, 1.25]
    assert list(row["property_keys"]) == ["team", "env"]
    assert list(row["property_values"]) == ["search", "prod"]
    assert list(row["prompt_input_keys"]) == ["name"]
    assert list(row["prompt_input_values"]) == ["Ada"]
    assert row["providers_tried"] == ["openai", "anthropic"]
    assert row["cost_usd"] == 0.002
    assert row["firewall_score"] is None
    assert row["stream"] == 1
    assert row["schema_version"] == record.schema_version


def test_columns_keep_row_order() -> None:
    records: list[AnyRecord] = [_request(request_id=f"r{i}", prompt_tokens=i) for i in range(5)]
    rows = _rows(Sink.REQUESTS, records)
    assert [r["request_id"] for r in rows] == [f"r{i}" for i in range(5)]
    assert [r["prompt_tokens"] for r in rows] == list(range(5))


def test_no_records_gives_empty_columns() -> None:
    columns = build_columns(Sink.SPANS, [])
    assert len(columns) == len(insert_columns(Sink.SPANS))
    assert all(len(c) == 0 for c in columns)


def test_span_and_breaker_columns() -> None:
    span = SpanRecord(
        span_id="s1",
        request_id="r1",
        org_id="o1",
        name="cache",
        created_at_ms=5_000,
        start_offset_ms=1.0,
        duration_ms=2.0,
        attributes={"tier": "exact"},
    )
    (row,) = _rows(Sink.SPANS, [span])
    assert (row["created_at"], row["name"], list(row["attribute_values"])) == (
        5,
        "cache",
        ["exact"],
    )
    event = BreakerEventRecord(
        event_id="e1", provider="openai", created_at_ms=7_999, from_state="closed", to_state="open"
    )
    (row,) = _rows(Sink.BREAKER_EVENTS, [event])
    assert (row["created_at"], row["to_state"]) == (7, "open")


def test_valid_rows_are_not_flagged() -> None:
    records: list[AnyRecord] = [_request(firewall_score=0.5, retries=3), _request()]
    assert invalid_rows(Sink.REQUESTS, records) == {}


@pytest.mark.parametrize(
    ("overrides", "column"),
    [
        ({"prompt_tokens": -1}, "prompt_tokens"),
        ({"completion_tokens": 2**32}, "completion_tokens"),
        ({"retries": 70_000}, "retries"),
        ({"status_code": -200}, "status_code"),
        ({"created_at_ms": 2**62}, "created_at"),
        ({"firewall_score": 1e300}, "firewall_score"),
    ],
)
def test_out_of_range_numbers_are_named(overrides: dict[str, Any], column: str) -> None:
    records: list[AnyRecord] = [_request(), _request(**overrides), _request()]
    bad = invalid_rows(Sink.REQUESTS, records)
    assert list(bad) == [1]
    assert column in bad[1]


def test_infinite_float32_is_not_flagged() -> None:
    """inf packs into Float32 (the driver accepts it), unlike finite values beyond its range."""
    assert invalid_rows(Sink.REQUESTS, [_request(firewall_score=float("inf"))]) == {}
