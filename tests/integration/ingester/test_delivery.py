from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import msgspec
import pytest

from devstack.servers import ClickHouseServer
from ingester.dead_letter import DeadLetterFile
from ingester.delivery import Delivery
from ingester.schema.migrate import migrate
from shared.codec import decode_record, encode_record, encode_spans
from shared.errors import SinkUnavailableError
from shared.records import RequestSpans, SpanRecord, StageTiming, span_records
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
def delivery(settings: ClickHouseSettings, tmp_path: Path) -> Iterator[Delivery]:
    delivery = Delivery(settings, tmp_path / "dead", attempts=2, backoff_s=0.01)
    yield delivery
    delivery.close()


def _count(settings: ClickHouseSettings, table: str = "requests") -> int:
    ((n,),) = query(settings, f"SELECT count() FROM {{db}}.{table} FINAL")
    return int(n)


def test_deliver_inserts_and_redelivery_is_deduplicated(
    delivery: Delivery, settings: ClickHouseSettings, tmp_path: Path
) -> None:
    payloads = [request_payload(i) for i in range(200)]
    report = delivery.deliver(Sink.REQUESTS, payloads)
    assert (report.inserted, report.dead_lettered) == (200, 0)
    assert _count(settings) == 200
    assert delivery.deliver(Sink.REQUESTS, payloads[50:150]).inserted == 100
    assert _count(settings) == 200
    ((raw,),) = query(settings, "SELECT count() FROM {db}.requests")
    assert raw == 300  # the duplicates exist until a merge: readers must use FINAL
    assert delivery.counters.get("inserted") == 300
    assert not (tmp_path / "dead").exists()


def test_spans_sink(delivery: Delivery, settings: ClickHouseSettings) -> None:
    span = SpanRecord(
        span_id="s1",
        request_id="r1",
        org_id="o1",
        name="cache",
        created_at_ms=1_790_000_000_000,
        start_offset_ms=0.5,
        duration_ms=1.5,
        attributes={"tier": "exact"},
    )
    assert delivery.deliver(Sink.SPANS, [encode_record(span)]).inserted == 1
    rows = query(settings, "SELECT name, attribute_keys, attribute_values FROM {db}.spans FINAL")
    assert rows == [("cache", ["tier"], ["exact"])]


def _span(request_id: str, name: str, created_at_ms: int = 1_790_000_000_000) -> SpanRecord:
    return SpanRecord(
        span_id=f"{request_id}-{name}",
        request_id=request_id,
        org_id="o1",
        name=name,
        created_at_ms=created_at_ms,
        start_offset_ms=0.5,
        duration_ms=1.5,
    )


def test_a_requests_spans_in_one_payload_become_rows_and_a_bad_one_is_set_aside_alone(
    delivery: Delivery, settings: ClickHouseSettings, tmp_path: Path
) -> None:
    created = 1_000  # a span timed before it (offset below -1 s) has no valid created_at
    entry = RequestSpans(
        request_id="a",
        org_id="o1",
        created_at_ms=created,
        spans=[
            StageTiming("auth", 0.5, 1.5),
            StageTiming("cache", -2_000.0, 1.5),
            StageTiming("dispatch", 2.0, 1.5),
        ],
    )
    payloads = [
        encode_spans(entry),
        encode_record(_span("b", "auth")),  # one span per entry: the oldest gateways
        msgspec.json.encode([_span("c", "auth"), _span("c", "dispatch")]),  # older: an array
    ]
    report = delivery.deliver(Sink.SPANS, payloads)
    assert (report.inserted, report.dead_lettered) == (5, 1)
    rows = query(
        settings, "SELECT request_id, name FROM {db}.spans FINAL ORDER BY request_id, name"
    )
    assert rows == [
        ("a", "auth"),
        ("a", "dispatch"),
        ("b", "auth"),
        ("c", "auth"),
        ("c", "dispatch"),
    ]
    (letter,) = DeadLetterFile(tmp_path / "dead", Sink.SPANS).read()
    # replayable alone: a span record
    bad = cast(SpanRecord, decode_record(Sink.SPANS, letter.payload))
    assert (bad.request_id, bad.name, bad.created_at_ms) == ("a", "cache", created - 2_000)
    assert bad.span_id == span_records(entry)[1].span_id
    assert "created_at" in letter.error


def test_poison_in_the_middle_is_set_aside_and_the_rest_inserted(
    delivery: Delivery, settings: ClickHouseSettings, tmp_path: Path
) -> None:
    payloads = [request_payload(i) for i in range(100)]
    payloads[37] = request_payload(37, prompt_tokens=-1)
    payloads[80] = request_payload(80, completion_tokens=2**40)
    report = delivery.deliver(Sink.REQUESTS, payloads)
    assert (report.inserted, report.dead_lettered) == (98, 2)
    assert _count(settings) == 98
    letters = list(DeadLetterFile(tmp_path / "dead", Sink.REQUESTS).read())
    assert [letter.payload for letter in letters] == [payloads[37], payloads[80]]
    assert "prompt_tokens" in letters[0].error
    assert "completion_tokens" in letters[1].error
    ids = {r for (r,) in query(settings, "SELECT request_id FROM {db}.requests")}
    assert decode_record(Sink.REQUESTS, payloads[37]).request_id not in ids


def test_undecodable_payloads_are_dead_lettered(
    delivery: Delivery, settings: ClickHouseSettings, tmp_path: Path
) -> None:
    payloads = [request_payload(1), b"not json", b'{"schema_version": 99}', request_payload(2)]
    report = delivery.deliver(Sink.REQUESTS, payloads)
    assert (report.inserted, report.dead_lettered) == (2, 2)
    letters = list(DeadLetterFile(tmp_path / "dead", Sink.REQUESTS).read())
    assert [letter.payload for letter in letters] == payloads[1:3]
    assert all(letter.error.startswith("RecordDecodeError") for letter in letters)


def test_bisection_finds_poison_the_range_check_misses(
    delivery: Delivery, settings: ClickHouseSettings, tmp_path: Path
) -> None:
    """The table drifted from the spec (retries narrowed to UInt8 by hand): the exact range
    check passes 300, ClickHouse's column cannot hold it, and bisection isolates the row."""
    query(settings, "ALTER TABLE {db}.requests MODIFY COLUMN retries UInt8")
    payloads = [request_payload(i, retries=300 if i in (3, 40) else 1) for i in range(64)]
    report = delivery.deliver(Sink.REQUESTS, payloads)
    assert (report.inserted, report.dead_lettered) == (62, 2)
    assert _count(settings) == 62
    letters = list(DeadLetterFile(tmp_path / "dead", Sink.REQUESTS).read())
    assert [letter.payload for letter in letters] == [payloads[3], payloads[40]]
    assert "retries" in letters[0].error
    assert 0 < delivery.counters.get("bisections") < 64


def test_killed_clickhouse_raises_then_delivery_recovers(
    clickhouse_factory: Callable[[], ClickHouseServer],
    tmp_path: Path,
) -> None:
    server: ClickHouseServer = clickhouse_factory()
    settings = unique_settings(server, connect_timeout_s=1.0, send_receive_timeout_s=5.0)
    migrate(settings)
    delivery = Delivery(settings, tmp_path / "dead", attempts=3, backoff_s=0.01)
    try:
        assert delivery.deliver(Sink.REQUESTS, [request_payload(1)]).inserted == 1
        server.kill()  # SIGKILL: quick, and harsher than a graceful stop
        assert not delivery.ping()
        with pytest.raises(SinkUnavailableError):
            delivery.deliver(Sink.REQUESTS, [request_payload(2), b"junk"])
        assert delivery.counters.get("retries") == 2
        assert delivery.counters.get("unavailable") == 1
        assert not (tmp_path / "dead").exists()  # nothing set aside for a failed call
        server.start()
        assert delivery.ping()
        report = delivery.deliver(Sink.REQUESTS, [request_payload(1), request_payload(2)])
        assert report.inserted == 2
        assert _count(settings) == 2
    finally:
        delivery.close()
