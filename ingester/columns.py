"""Records → columns, for a columnar insert of one sink. Pure: no I/O.

Column order is ``ingester.schema.ddl.insert_columns(sink)``; most columns are the record field
of the same name, the rest are derived here (the DateTime of ``created_at_ms``, the parallel
key/value arrays that stand in for Map on 18.16).

``invalid_rows`` is the slow, exact check used only when a batch was rejected: it names the
rows whose numbers do not fit their column, so they can be set aside without bisection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from msgspec.structs import astuple

from ingester.schema.ddl import TABLES, insert_columns
from shared.codec import RECORD_TYPES, AnyRecord
from shared.streams import Sink

__all__ = ["Columns", "build_columns", "invalid_rows"]

Columns = list[Sequence[Any]]
FieldColumns = dict[str, Sequence[Any]]
Builder = Callable[[FieldColumns], Sequence[Any]]


def _field(name: str) -> Builder:
    return lambda fields: fields[name]


def _values(name: str) -> Builder:
    return lambda fields: list(map(dict.values, fields[name]))


def _created_at(fields: FieldColumns) -> list[int]:
    return [ms // 1000 for ms in fields["created_at_ms"]]


_DERIVED: dict[str, Builder] = {
    "created_at": _created_at,
    # A dict is a fine key array: the driver's Array column needs only len() and iteration.
    "stage_names": _field("stage_latency_ms"),
    "stage_latency_ms": _values("stage_latency_ms"),
    "property_keys": _field("properties"),
    "property_values": _values("properties"),
    "prompt_input_keys": _field("prompt_inputs"),
    "prompt_input_values": _values("prompt_inputs"),
    "cache_lookup_tiers": _field("cache_lookup_ms"),
    "cache_lookup_ms": _values("cache_lookup_ms"),
    "request_header_keys": _field("request_headers"),
    "request_header_values": _values("request_headers"),
    "response_header_keys": _field("response_headers"),
    "response_header_values": _values("response_headers"),
    "attribute_keys": _field("attributes"),
    "attribute_values": _values("attributes"),
}


def _builders(sink: Sink) -> tuple[Builder, ...]:
    return tuple(_DERIVED.get(name) or _field(name) for name in insert_columns(sink))


_BUILDERS: dict[Sink, tuple[Builder, ...]] = {sink: _builders(sink) for sink in Sink}
_FIELD_NAMES: dict[Sink, tuple[str, ...]] = {
    sink: tuple(f.name for f in msgspec.structs.fields(rtype))
    for sink, rtype in RECORD_TYPES.items()
}


def build_columns(sink: Sink, records: Sequence[AnyRecord]) -> Columns:
    """One sequence per insert column, each as long as ``records`` (all of ``sink``'s type).

    The records are transposed in C (``astuple`` + ``zip``), so most columns cost nothing
    more; only derived columns loop in Python."""
    names = _FIELD_NAMES[sink]
    if records:
        transposed = zip(*map(astuple, records), strict=True)
        fields: FieldColumns = dict(zip(names, transposed, strict=True))
    else:
        fields = {name: () for name in names}
    return [build(fields) for build in _BUILDERS[sink]]


_INT_RANGES: dict[str, tuple[int, int]] = {
    "UInt8": (0, 2**8 - 1),
    "UInt16": (0, 2**16 - 1),
    "UInt32": (0, 2**32 - 1),
    "UInt64": (0, 2**64 - 1),
    "DateTime": (0, 2**32 - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38


def _bad_value(ch_type: str, value: Any) -> bool:
    if ch_type.startswith("Nullable("):
        if value is None:
            return False
        ch_type = ch_type[len("Nullable(") : -1]
    bounds = _INT_RANGES.get(ch_type)
    if bounds is not None:
        return not bounds[0] <= value <= bounds[1]
    if ch_type == "Float32":
        return math.isfinite(value) and abs(value) > _FLOAT32_MAX
    return False


def invalid_rows(sink: Sink, records: Sequence[AnyRecord]) -> dict[int, str]:
    """Row index → why it cannot be inserted, for numbers outside their column's range (the
    driver refuses to pack them). Other kinds of poison are left to bisection."""
    types = {c.name: c.type for c in TABLES[sink].columns}
    bad: dict[int, str] = {}
    for name, values in zip(insert_columns(sink), build_columns(sink, records), strict=True):
        ch_type = types[name]
        for i, value in enumerate(values):
            if i not in bad and _bad_value(ch_type, value):
                bad[i] = f"column {name} ({ch_type}) cannot hold {value!r}"
    return bad
