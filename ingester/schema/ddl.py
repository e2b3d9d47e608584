"""The ClickHouse tables of the three sinks, as data, and the DDL text they produce.

Pure: no I/O. One portable core runs on ClickHouse 18.16 (Debian's package); the optimisations a
current server offers (LowCardinality, TTL, skip indexes) are added only when
``server_capabilities`` says the server has them, so the same table spec yields both DDLs and
both are unit-tested for their text.

Deduplication contract: delivery is at least once, so every table is a ``ReplacingMergeTree``
whose sorting key holds the record identity and only values fixed by the record. A record
delivered twice is the same key, and merges keep one row. Until a merge runs, both rows exist:
**every reader must query with ``FINAL``** (or an equivalent ``GROUP BY`` on the identity).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.streams import Sink
from shared.tables import BREAKER_EVENTS, REQUESTS, SPANS

__all__ = [
    "DEDUP_NOTE",
    "TABLES",
    "Capabilities",
    "Column",
    "SkipIndex",
    "TableSpec",
    "add_column_ddl",
    "create_database_ddl",
    "create_table_ddl",
    "insert_columns",
    "insert_statement",
    "parse_version",
    "server_capabilities",
]

DEDUP_NOTE = "rows are deduplicated by record identity: read with FINAL"


@dataclass(frozen=True)
class Column:
    """One column. ``since`` is the migration that adds it; ``low_cardinality`` marks a String
    with few distinct values (wrapped in LowCardinality where the server supports it);
    ``default`` columns are filled by the server and never sent on insert."""

    name: str
    type: str
    since: int = 1
    low_cardinality: bool = False
    default: str = ""


@dataclass(frozen=True)
class SkipIndex:
    name: str
    expression: str
    type: str
    granularity: int = 4


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    partition_by: str
    order_by: tuple[str, ...]
    ttl_column: str
    skip_indexes: tuple[SkipIndex, ...] = ()
    shard_by: str = ""
    """On a cluster, rows go to the shard of ``cityHash64(shard_by)``: a column fixed by the
    record's identity, so a record delivered twice lands on one shard (``schema.cluster``)."""


@dataclass(frozen=True)
class Capabilities:
    """What a server version supports, as far as the DDL is concerned."""

    version: tuple[int, ...]
    low_cardinality: bool
    ttl: bool
    skip_indexes: bool
    add_column_if_not_exists: bool


def parse_version(version: str | tuple[int, ...]) -> tuple[int, ...]:
    """'18.16.1' or '24.3.2.23' → a tuple of ints (non-numeric suffixes ignored)."""
    if isinstance(version, tuple):
        return version
    parts = [int(m) for m in re.findall(r"\d+", version.split("-")[0])]
    if not parts:
        raise ValueError(f"not a ClickHouse version: {version!r}")
    return tuple(parts)


def server_capabilities(version: str | tuple[int, ...]) -> Capabilities:
    """Thresholds are the first release where the feature is on without an experimental flag
    (LowCardinality was experimental in 18.x; TTL arrived in 19.6; skip indexes needed
    ``allow_experimental_data_skipping_indices`` until 20.1). ``ADD COLUMN IF NOT EXISTS`` is a
    syntax error on 18.16.1 (tested); 20.1 is a conservative threshold, and the migration runner
    checks ``system.columns`` anyway, so a server that has it earlier loses nothing."""
    v = parse_version(version)
    return Capabilities(
        version=v,
        low_cardinality=v >= (19, 0),
        ttl=v >= (19, 6),
        skip_indexes=v >= (20, 1),
        add_column_if_not_exists=v >= (20, 1),
    )


def _lc(name: str) -> Column:
    return Column(name, "String", low_cardinality=True)


def _s(name: str) -> Column:
    return Column(name, "String")


_IDENTITY_TIME = (
    Column("created_at", "DateTime"),
    Column("created_at_ms", "UInt64"),
)
_TAIL = (
    Column("schema_version", "UInt16"),
    Column("ingested_at", "DateTime", default="now()"),
)

_REQUESTS = TableSpec(
    name=REQUESTS,
    columns=(
        _s("request_id"),
        _s("org_id"),
        _s("api_key_id"),
        *_IDENTITY_TIME,
        _lc("endpoint"),
        Column("stream", "UInt8"),
        _lc("model_requested"),
        _lc("model_used"),
        _lc("provider"),
        Column("status_code", "UInt16"),
        _lc("error_code"),
        _s("error_message"),
        _s("request_body"),
        _s("response_body"),
        Column("bodies_redacted", "UInt8"),
        Column("latency_ms", "Float64"),
        Column("time_to_first_token_ms", "Float64"),
        Column("stage_names", "Array(String)"),
        Column("stage_latency_ms", "Array(Float64)"),
        Column("prompt_tokens", "UInt32"),
        Column("completion_tokens", "UInt32"),
        Column("total_tokens", "UInt32"),
        Column("cached_prompt_tokens", "UInt32", since=2),
        Column("tokens_estimated", "UInt8", since=2),
        Column("cost_usd", "Nullable(Float64)"),
        _lc("cache_status"),
        _lc("cache_tier"),
        _lc("firewall_verdict"),
        Column("firewall_score", "Nullable(Float32)"),
        _lc("firewall_backend"),
        _lc("firewall_model_ref"),
        Column("firewall_cached", "UInt8"),
        Column("cache_similarity", "Nullable(Float32)", since=3),
        Column("cache_threshold", "Nullable(Float32)", since=3),
        Column("cache_key_hash", "String", since=3),
        Column("cache_lookup_tiers", "Array(String)", since=3),
        Column("cache_lookup_ms", "Array(Float64)", since=3),
        Column("cache_error", "String", since=3),
        Column("cost_saved_usd", "Nullable(Float64)", since=3),
        Column("firewall_verdict_source", "String", since=3, low_cardinality=True),
        Column("firewall_categories", "Array(String)", since=3),
        Column("firewall_reason", "String", since=3),
        Column("firewall_latency_ms", "Float64", since=3),
        Column("firewall_tokens", "UInt32", since=3),
        Column("firewall_cost_usd", "Nullable(Float64)", since=3),
        _s("user_id"),
        _s("session_id"),
        _s("session_name"),
        _s("session_path"),
        Column("property_keys", "Array(String)"),
        Column("property_values", "Array(String)"),
        _s("prompt_id"),
        Column("prompt_version", "UInt32"),
        Column("prompt_input_keys", "Array(String)"),
        Column("prompt_input_values", "Array(String)"),
        Column("providers_tried", "Array(String)"),
        Column("retries", "UInt16"),
        Column("request_header_keys", "Array(String)", since=3),
        Column("request_header_values", "Array(String)", since=3),
        Column("response_header_keys", "Array(String)", since=3),
        Column("response_header_values", "Array(String)", since=3),
        *_TAIL,
    ),
    partition_by="toYYYYMM(created_at)",
    order_by=("org_id", "created_at", "request_id"),
    ttl_column="created_at",
    shard_by="request_id",
    skip_indexes=(
        SkipIndex("user_id_idx", "user_id", "bloom_filter(0.01)"),
        SkipIndex("session_id_idx", "session_id", "bloom_filter(0.01)"),
        SkipIndex("status_code_idx", "status_code", "minmax"),
    ),
)

_SPANS = TableSpec(
    name=SPANS,
    columns=(
        _s("span_id"),
        _s("request_id"),
        _s("org_id"),
        _lc("name"),
        *_IDENTITY_TIME,
        Column("start_offset_ms", "Float64"),
        Column("duration_ms", "Float64"),
        _lc("status"),
        Column("attribute_keys", "Array(String)"),
        Column("attribute_values", "Array(String)"),
        *_TAIL,
    ),
    partition_by="toYYYYMM(created_at)",
    order_by=("org_id", "created_at", "request_id", "span_id"),
    ttl_column="created_at",
    shard_by="request_id",  # a request's spans live on its shard
    skip_indexes=(SkipIndex("request_id_idx", "request_id", "bloom_filter(0.01)"),),
)

_BREAKER_EVENTS = TableSpec(
    name=BREAKER_EVENTS,
    columns=(
        _s("event_id"),
        _lc("provider"),
        *_IDENTITY_TIME,
        _lc("from_state"),
        _lc("to_state"),
        Column("failure_count", "UInt32"),
        _s("reason"),
        *_TAIL,
    ),
    partition_by="toYYYYMM(created_at)",
    order_by=("provider", "created_at", "event_id"),
    ttl_column="created_at",
    shard_by="event_id",
)

TABLES: dict[Sink, TableSpec] = {
    Sink.REQUESTS: _REQUESTS,
    Sink.SPANS: _SPANS,
    Sink.BREAKER_EVENTS: _BREAKER_EVENTS,
}


def _q(name: str) -> str:
    return f"`{name}`"


def _column_type(column: Column, caps: Capabilities) -> str:
    if column.low_cardinality and caps.low_cardinality:
        return f"LowCardinality({column.type})"
    return column.type


def _column_ddl(column: Column, caps: Capabilities) -> str:
    default = f" DEFAULT {column.default}" if column.default else ""
    return f"{_q(column.name)} {_column_type(column, caps)}{default}"


def create_database_ddl(database: str) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {_q(database)}"


def create_table_ddl(
    database: str,
    spec: TableSpec,
    caps: Capabilities,
    *,
    up_to: int | None = None,
    retention_days: int | None = None,
) -> str:
    """CREATE TABLE IF NOT EXISTS with the columns of migrations ``<= up_to`` (all if None).

    TTL is added only when the server has it and a retention is asked for; skip indexes only
    when the server has them without an experimental flag."""
    columns = [c for c in spec.columns if up_to is None or c.since <= up_to]
    lines = [_column_ddl(c, caps) for c in columns]
    if caps.skip_indexes:
        lines += [
            f"INDEX {_q(i.name)} {i.expression} TYPE {i.type} GRANULARITY {i.granularity}"
            for i in spec.skip_indexes
        ]
    body = ",\n    ".join(lines)
    ddl = (
        f"CREATE TABLE IF NOT EXISTS {_q(database)}.{_q(spec.name)} (\n    {body}\n)\n"
        f"ENGINE = ReplacingMergeTree()\n"
        f"PARTITION BY {spec.partition_by}\n"
        f"ORDER BY ({', '.join(spec.order_by)})"
    )
    if caps.ttl and retention_days is not None:
        ddl += f"\nTTL {spec.ttl_column} + toIntervalDay({int(retention_days)})"
    return ddl


def add_column_ddl(database: str, table: str, column: Column, caps: Capabilities) -> str:
    if_not_exists = " IF NOT EXISTS" if caps.add_column_if_not_exists else ""
    return (
        f"ALTER TABLE {_q(database)}.{_q(table)} "
        f"ADD COLUMN{if_not_exists} {_column_ddl(column, caps)}"
    )


def insert_columns(sink: Sink) -> tuple[str, ...]:
    """The columns an insert sends, in order (server-filled defaults excluded)."""
    return tuple(c.name for c in TABLES[sink].columns if not c.default)


def insert_statement(database: str, sink: Sink) -> str:
    names = ", ".join(_q(n) for n in insert_columns(sink))
    return f"INSERT INTO {_q(database)}.{_q(TABLES[sink].name)} ({names}) VALUES"
