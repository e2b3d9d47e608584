"""The alternative to the native insert that ``bench.ingest`` measures beside it: the records'
JSON sent to ClickHouse's HTTP port as ``INSERT … FORMAT JSONEachRow`` and parsed by the server.

Not used by the ingester (measured and rejected, README "Benchmarks"): it saves 20-40% of the
ingester's CPU for about the same in ClickHouse, but 18.16's JSON float parser is not exact
(checked by hand: 681 of 3,006 doubles made of random bits came back one ulp off, none of 6,000
in the ranges of latencies and costs; the native protocol is bit-exact). Kept here so the
comparison can be rerun.

What 18.16 accepts, checked by hand: a DateTime as a number, ``true`` into a UInt8, ``null`` into
a Nullable, JSON arrays into Array columns; it does **not** read an object into the parallel
key/value arrays, and it silently wraps an out-of-range integer (300 into UInt8 is 44). So each
line is decoded into a struct whose strings stay raw JSON (``msgspec.Raw``: no unescaping), whose
integers carry their column's range, and whose objects are split into key and value arrays
before it is encoded again.
"""

from __future__ import annotations

import http.client
import typing
import urllib.parse
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Raw

from ingester.schema.ddl import TABLES, insert_columns
from shared.records import RequestRecord
from shared.streams import Sink

__all__ = ["JsonEachRowInserter", "json_rows"]

_SPLIT = {
    "stage_latency_ms": ("stage_names", "stage_latency_ms"),
    "properties": ("property_keys", "property_values"),
    "prompt_inputs": ("prompt_input_keys", "prompt_input_values"),
    "cache_lookup_ms": ("cache_lookup_tiers", "cache_lookup_ms"),
    "request_headers": ("request_header_keys", "request_header_values"),
    "response_headers": ("response_header_keys", "response_header_values"),
}
_FLOAT32_MAX = 3.4028234663852886e38
_RANGES: dict[str, Any] = {
    "UInt8": Annotated[int, Meta(ge=0, le=2**8 - 1)],
    "UInt16": Annotated[int, Meta(ge=0, le=2**16 - 1)],
    "UInt32": Annotated[int, Meta(ge=0, le=2**32 - 1)],
    "Nullable(Float32)": Annotated[float, Meta(ge=-_FLOAT32_MAX, le=_FLOAT32_MAX)] | None,
}


def _row_type() -> type[msgspec.Struct]:
    columns = {c.name: c.type for c in TABLES[Sink.REQUESTS].columns}
    hints = typing.get_type_hints(RequestRecord)
    fields: list[tuple[str, Any, Any]] = []
    for f in msgspec.structs.fields(RequestRecord):
        kind: Any = hints[f.name]
        if f.name in _SPLIT:
            kind = dict[str, Any]
        elif kind is str:
            kind = Raw
        elif kind is not bool and f.name in columns:
            kind = _RANGES.get(columns[f.name], kind)
        default = f.default
        if f.default_factory is not msgspec.NODEFAULT:
            default = msgspec.field(default_factory=f.default_factory)
        fields.append((f.name, kind, default))
    known = {name for name, _, _ in fields}
    extra = ["created_at", *(n for pair in _SPLIT.values() for n in pair if n not in known)]
    fields += [(name, Any, None) for name in extra]
    return msgspec.defstruct("JsonRow", fields, kw_only=True)


_ROW = _row_type()
_decoder = msgspec.json.Decoder(_ROW)
_encoder = msgspec.json.Encoder()


def json_rows(payloads: Sequence[bytes]) -> bytes:
    """JSONEachRow lines for the requests table, one per payload (raises on a bad one)."""
    rows = []
    for payload in payloads:
        row: Any = _decoder.decode(payload)
        row.created_at = row.created_at_ms // 1000
        for field, (keys, values) in _SPLIT.items():
            mapping = getattr(row, field)
            setattr(row, field, None)  # read by no column; the server skips it
            setattr(row, keys, list(mapping))
            setattr(row, values, list(mapping.values()))
        rows.append(row)
    return _encoder.encode_lines(rows)


class JsonEachRowInserter:
    """One keep-alive HTTP connection to ClickHouse's HTTP port."""

    def __init__(self, host: str, http_port: int, database: str) -> None:
        columns = ", ".join(f"`{c}`" for c in insert_columns(Sink.REQUESTS))
        query = f"INSERT INTO `{database}`.`requests` ({columns}) FORMAT JSONEachRow"
        params = {"query": query, "input_format_skip_unknown_fields": "1"}
        self._path = "/?" + urllib.parse.urlencode(params)
        self._conn = http.client.HTTPConnection(host, http_port, timeout=60)

    def insert(self, payloads: Sequence[bytes]) -> int:
        self._conn.request("POST", self._path, body=json_rows(payloads))
        response = self._conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"clickhouse said {response.status}: {body[:300]!r}")
        return len(payloads)

    def close(self) -> None:
        self._conn.close()
