from __future__ import annotations

import msgspec
import pytest

from shared.codec import decode_record, encode_record
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
