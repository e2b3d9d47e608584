from __future__ import annotations

import random
import uuid
from typing import Any, cast

import msgspec
import pytest

from shared.codec import (
    decode_current,
    decode_record,
    decode_records,
    encode_record,
    encode_spans,
)
from shared.errors import RecordDecodeError
from shared.records import (
    SCHEMA_VERSION,
    RequestRecord,
    RequestSpans,
    SpanRecord,
    StageTiming,
    span_id,
)
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


def test_a_batch_of_current_records_decodes_in_one_pass_as_one_by_one() -> None:
    payloads = [
        encode_record(msgspec.structs.replace(_record(), request_id=f"r{i}")) for i in range(5)
    ]
    assert decode_current(Sink.REQUESTS, payloads) == [
        decode_record(Sink.REQUESTS, p) for p in payloads
    ]


def _previous_version() -> bytes:
    raw = msgspec.structs.asdict(_record())
    raw["schema_version"] = 2
    return msgspec.json.encode(raw)


@pytest.mark.parametrize("odd", [_previous_version(), b"not json", b'{"request_id": 1}'])
def test_a_batch_with_one_payload_not_current_is_left_to_one_by_one(odd: bytes) -> None:
    payloads = [encode_record(_record()), odd, encode_record(_record())]
    assert decode_current(Sink.REQUESTS, payloads) is None


def test_spans_entries_are_never_decoded_in_one_pass() -> None:
    entry = RequestSpans(
        request_id="r1",
        org_id="o1",
        created_at_ms=1_700_000_000_000,
        spans=[StageTiming("auth", 0.0, 0.1)],
    )
    assert decode_current(Sink.SPANS, [encode_spans(entry)]) is None


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
    assert cast(SpanRecord, decode_record(Sink.SPANS, encode_record(span))) == span


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


def _entry(*timings: StageTiming, request_id: str = "r") -> RequestSpans:
    return RequestSpans(request_id=request_id, org_id="o", created_at_ms=1_000, spans=[*timings])


def test_a_requests_spans_are_one_entry_the_ingester_makes_records_of_in_order() -> None:
    rid = str(uuid.uuid4())
    entry = _entry(
        StageTiming("auth", 0.25, 0.2),
        StageTiming("dispatch", 3.9, 4.5, "error"),
        StageTiming("provider_attempt", 4.0, 4.4, "ok", {"attempt": "2", "provider": "p"}),
        request_id=rid,
    )

    def made(id_name: str, name: str, created_at_ms: int, **fields: Any) -> SpanRecord:
        span_id = str(uuid.uuid5(uuid.UUID(rid), id_name))
        return SpanRecord(
            span_id=span_id,
            request_id=rid,
            org_id="o",
            name=name,
            created_at_ms=created_at_ms,
            **fields,
        )

    assert decode_records(Sink.SPANS, encode_spans(entry)) == [
        made("auth", "auth", 1_000, start_offset_ms=0.25, duration_ms=0.2),
        made("dispatch", "dispatch", 1_003, start_offset_ms=3.9, duration_ms=4.5, status="error"),
        made(
            "provider_attempt#2",
            "provider_attempt",
            1_004,
            start_offset_ms=4.0,
            duration_ms=4.4,
            attributes={"attempt": "2", "provider": "p"},
        ),
    ]


def test_an_entry_delivered_twice_makes_the_same_span_records() -> None:
    data = encode_spans(_entry(StageTiming("auth", 0.1, 0.2), StageTiming("cache", 0.3, 0.1)))
    assert decode_records(Sink.SPANS, data) == decode_records(Sink.SPANS, data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"schema_version": 3, "request_id": "r", "org_id": "o", "created_at_ms": 1, "spans": []}',
        b'{"schema_version": 99, "request_id": "r", "org_id": "o", "created_at_ms": 1, '
        b'"spans": [{"name": "auth", "start_offset_ms": 0, "duration_ms": 1}]}',
        b'{"schema_version": 3, "request_id": "r", "org_id": "o", "created_at_ms": 1, '
        b'"spans": [{"name": "auth", "start_offset_ms": "soon", "duration_ms": 1}]}',
        b'{"request_id": "r", "spans": 7}',
        b"{not json",
    ],
)
def test_a_bad_request_spans_entry_is_one_decode_error(data: bytes) -> None:
    with pytest.raises(RecordDecodeError):
        decode_records(Sink.SPANS, data)


def test_an_array_of_span_records_from_an_older_gateway_still_decodes() -> None:
    spans = [_span("auth"), _span("dispatch", attributes={"attempt": "1"})]
    assert decode_records(Sink.SPANS, msgspec.json.encode(spans)) == spans


def test_a_single_span_entry_from_an_older_gateway_still_decodes() -> None:
    assert decode_records(Sink.SPANS, encode_record(_span("auth"))) == [_span("auth")]


def test_spans_of_the_previous_schema_version_are_upgraded_inside_an_array() -> None:
    old = msgspec.json.decode(msgspec.json.encode([_span("auth"), _span("cache")]))
    for raw in old:
        raw["schema_version"] = SCHEMA_VERSION - 1
    decoded = cast(list[SpanRecord], decode_records(Sink.SPANS, msgspec.json.encode(old)))
    assert [s.name for s in decoded] == ["auth", "cache"]
    assert all(s.schema_version == SCHEMA_VERSION for s in decoded)


@pytest.mark.parametrize(
    "data",
    [b"[]", b"[1, 2]", b'[{"name": "auth"}]', b"[not json", b'[{"schema_version": 99}]'],
)
def test_a_bad_spans_array_is_one_decode_error(data: bytes) -> None:
    with pytest.raises(RecordDecodeError):
        decode_records(Sink.SPANS, data)


def test_spans_are_not_a_record_of_the_other_sinks() -> None:
    for data in (
        msgspec.json.encode([_span("auth")]),
        encode_spans(_entry(StageTiming("a", 0, 1))),
    ):
        with pytest.raises(RecordDecodeError):
            decode_records(Sink.REQUESTS, data)


def test_span_id_is_uuid5_for_any_namespace_and_name() -> None:
    """The version and variant digits are set in the text: every first digit of clock_seq."""
    rng = random.Random(13)
    for i in range(2000):
        namespace = rng.randbytes(16)
        name = f"stage-{i}#{rng.randrange(10)}é"
        assert span_id(namespace, name) == str(uuid.uuid5(uuid.UUID(bytes=namespace), name))
