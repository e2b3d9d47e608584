"""Bytes ⇄ records, for stream entries, fallback-file lines and dead-letter lines alike.

One encoding everywhere (compact JSON, one record per line) means a spool line can be replayed
with the same decoder that reads the stream, and an on-call engineer can read either with jq.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any, TypeVar, cast

import msgspec

from shared.errors import RecordDecodeError
from shared.records import (
    PREVIOUS_SCHEMA_VERSION,
    SCHEMA_VERSION,
    BreakerEventRecord,
    RequestRecord,
    RequestSpans,
    SpanRecord,
    span_records,
)
from shared.streams import Sink

__all__ = [
    "RECORD_TYPES",
    "AnyRecord",
    "decode_current",
    "decode_record",
    "decode_records",
    "encode_record",
    "encode_spans",
    "upgrade_v1",
]

AnyRecord = RequestRecord | SpanRecord | BreakerEventRecord
R = TypeVar("R", RequestRecord, SpanRecord, BreakerEventRecord)

RECORD_TYPES: dict[Sink, type[AnyRecord]] = {
    Sink.REQUESTS: RequestRecord,
    Sink.SPANS: SpanRecord,
    Sink.BREAKER_EVENTS: BreakerEventRecord,
}

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t) for t in RECORD_TYPES.values()
}
_raw_decoder = msgspec.json.Decoder(dict[str, Any])
_spans_decoder = msgspec.json.Decoder(list[SpanRecord])
_request_spans_decoder = msgspec.json.Decoder(RequestSpans)
_raw_list_decoder = msgspec.json.Decoder(list[dict[str, Any]])


def encode_record(record: AnyRecord) -> bytes:
    return _encoder.encode(record)


def encode_spans(spans: RequestSpans) -> bytes:
    """A request's spans as one entry of the spans sink: the request's identity once, then
    its timings (``RequestSpans``). One entry per request rather than one per span (about
    ten): one encode, one buffered entry and one ``XADD`` where there were ten, on the
    gateway's hot path and in Redis."""
    return _encoder.encode(spans)


def decode_records(sink: Sink, data: bytes | str) -> list[AnyRecord]:
    """The records of one entry (stream entry, spool or dead-letter line): one record, or on
    the spans sink the span records of a request's ``RequestSpans``. What older gateways sent
    there still decodes: a JSON array of span records, or a single one. Raises
    RecordDecodeError for anything else, an entry without spans included."""
    if sink is not Sink.SPANS:
        return [decode_record(sink, data)]
    first = data[:1]
    if first in (b"{", "{"):
        return _request_spans(data)
    if first not in (b"[", "["):
        return [decode_record(sink, data)]
    try:
        spans = cast(list[AnyRecord], _spans_decoder.decode(data))
        if spans and all(s.schema_version == SCHEMA_VERSION for s in spans):
            return spans
    except msgspec.DecodeError:
        pass
    try:
        raws = _raw_list_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise RecordDecodeError(f"not a JSON array of span records: {exc}") from exc
    if not raws:
        raise RecordDecodeError("an empty array of span records")
    return [_from_raw(sink, raw, SpanRecord) for raw in raws]


def _request_spans(data: bytes | str) -> list[AnyRecord]:
    try:
        entry = _request_spans_decoder.decode(data)
    except msgspec.DecodeError:  # ValidationError is one: a single span record, or not JSON
        return [decode_record(Sink.SPANS, data)]
    if entry.schema_version != SCHEMA_VERSION:
        raise RecordDecodeError(f"unsupported schema_version {entry.schema_version!r}")
    if not entry.spans:
        raise RecordDecodeError("a request's spans entry without spans")
    return cast(list[AnyRecord], span_records(entry))


def upgrade_v1(sink: Sink, raw: dict[str, Any]) -> dict[str, Any]:
    """Turn a v1 record (as a dict) into the current shape (v2 and v3 only added fields with
    defaults after v1's ``properties_json``)."""
    if sink is Sink.REQUESTS:
        props = raw.pop("properties_json", "") or "{}"
        try:
            parsed = msgspec.json.decode(props)
        except msgspec.DecodeError as exc:
            raise RecordDecodeError(f"v1 properties_json is not JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise RecordDecodeError("v1 properties_json is not an object")
        raw["properties"] = {str(k): str(v) for k, v in parsed.items()}
    raw["schema_version"] = SCHEMA_VERSION
    return raw


_version = attrgetter("schema_version")


def decode_current(sink: Sink, payloads: Sequence[bytes]) -> list[AnyRecord] | None:
    """Each payload as one record of the current schema version, in one pass; None when any
    payload is not that (another version, not a record, or the spans sink, whose entries hold
    a request's spans), and the caller decodes them one by one (``decode_records``). A batch
    is nearly always all current: one pass costs ≈ 5% less CPU per record than a call each."""
    if sink is Sink.SPANS:
        return None
    try:
        records = list(map(_decoders[RECORD_TYPES[sink]].decode, payloads))
    except msgspec.DecodeError:  # ValidationError is one
        return None
    if not set(map(_version, records)) <= {SCHEMA_VERSION}:
        return None
    return records


def decode_record(sink: Sink, data: bytes | str, record_type: type[R] | None = None) -> R:
    """Decode one record of ``sink``; raises RecordDecodeError for anything else.

    The fast path decodes straight into the current struct; only records of another version
    take the slower dict route.
    """
    rtype = cast(type[R], record_type or RECORD_TYPES[sink])
    try:
        record = cast(R, _decoders[rtype].decode(data))
        if record.schema_version == SCHEMA_VERSION:
            return record
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass
    try:
        raw = _raw_decoder.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError (not an object) is one
        raise RecordDecodeError(f"not JSON: {exc}") from exc
    return _from_raw(sink, raw, rtype)


def _from_raw(sink: Sink, raw: dict[str, Any], rtype: type[R]) -> R:
    """A record of another schema version (as a dict) upgraded to the current struct."""
    version = raw.get("schema_version")
    if version == 1:
        raw = upgrade_v1(sink, raw)
    elif version == PREVIOUS_SCHEMA_VERSION:
        raw["schema_version"] = SCHEMA_VERSION  # v3 only added fields, each with a default
    elif version != SCHEMA_VERSION:
        raise RecordDecodeError(f"unsupported schema_version {version!r}")
    try:
        return msgspec.convert(raw, rtype)
    except msgspec.ValidationError as exc:
        raise RecordDecodeError(f"invalid {sink.value} record: {exc}") from exc
