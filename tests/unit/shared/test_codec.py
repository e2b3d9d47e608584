from __future__ import annotations

import msgspec
import pytest

from shared.codec import decode_record, decode_records, encode_record, encode_spans
from shared.errors import RecordDecodeError
from shared.records import SCHEMA_VERSION, RequestRecord, SpanRecord
from shared.streams import Sink


def _record() -> RequestRecord:
    return RequestRecord(
        request_id="r1",
        org_id="o1",
        api_key_id="k1",
        created_at_ms=1_700_000_000_000,
        properties={"tier": "premium"},
        stage_latency_ms={"auth": 0.1},
    )


def test_round_trip_current_version() -> None:
    rec = _record()
    assert decode_record(Sink.REQUESTS, encode_record(rec)) == rec


def test_previous_version_is_upgraded() -> None:
    """A v2 record (no cache/firewall detail, no headers) decodes with those fields empty."""
    raw = msgspec.structs.asdict(_record())
    raw["schema_version"] = 2
    for name in ("cache_similarity", "cache_lookup_ms", "firewall_categories", "request_headers"):
        del raw[name]
    rec = decode_record(Sink.REQUESTS, msgspec.json.encode(raw))
    assert rec.schema_version == SCHEMA_VERSION
    assert rec.cache_similarity is None
    assert rec.cache_lookup_ms == {}
    assert rec.firewall_categories == []
    assert rec.request_headers == {}


def test_v1_is_upgraded() -> None:
    raw = msgspec.structs.asdict(_record())
    raw["schema_version"] = 1
    del raw["request_headers"]
    del raw["properties"]
    del raw["cached_prompt_tokens"]
    raw["properties_json"] = '{"tier": "free", "n": 3}'
    rec = decode_record(Sink.REQUESTS, msgspec.json.encode(raw))
    assert rec.schema_version == SCHEMA_VERSION
    assert rec.properties == {"tier": "free", "n": "3"}
    assert rec.cached_prompt_tokens == 0


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[]", b'{"schema_version": 99, "request_id": "x"}', b'{"schema_version": 2}'],
)
def test_garbage_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(RecordDecodeError):
        decode_record(Sink.REQUESTS, data)


def test_spans_decode_with_their_own_type() -> None:
    span = SpanRecord(
        span_id="s",
        request_id="r",
        org_id="o",
        name="auth",
        created_at_ms=1,
        start_offset_ms=0.0,
        duration_ms=0.2,
    )
    assert decode_record(Sink.SPANS, encode_record(span)) == span


def _span(name: str, **fields: object) -> SpanRecord:
    return SpanRecord(
        span_id=f"s-{name}",
        request_id="r",
        org_id="o",
        name=name,
        created_at_ms=1,
        start_offset_ms=0.0,
        duration_ms=0.2,
        **fields,  # type: ignore[arg-type]
    )


def test_a_requests_spans_are_one_entry_and_decode_in_order() -> None:
    spans = [_span("auth"), _span("dispatch", attributes={"attempt": "1"})]
    assert decode_records(Sink.SPANS, encode_spans(spans)) == spans


def test_a_single_span_entry_from_an_older_gateway_still_decodes() -> None:
    assert decode_records(Sink.SPANS, encode_record(_span("auth"))) == [_span("auth")]


def test_spans_of_the_previous_schema_version_are_upgraded_inside_an_array() -> None:
    old = msgspec.json.decode(encode_spans([_span("auth"), _span("cache")]))
    for raw in old:
        raw["schema_version"] = SCHEMA_VERSION - 1
    decoded = decode_records(Sink.SPANS, msgspec.json.encode(old))
    assert [s.name for s in decoded] == ["auth", "cache"]
    assert all(s.schema_version == SCHEMA_VERSION for s in decoded)


@pytest.mark.parametrize(
    "data",
    [b"[]", b"[1, 2]", b'[{"name": "auth"}]', b"[not json", b'[{"schema_version": 99}]'],
)
def test_a_bad_spans_array_is_one_decode_error(data: bytes) -> None:
    with pytest.raises(RecordDecodeError):
        decode_records(Sink.SPANS, data)


def test_an_array_is_not_a_record_of_the_other_sinks() -> None:
    with pytest.raises(RecordDecodeError):
        decode_records(Sink.REQUESTS, encode_spans([_span("auth")]))
