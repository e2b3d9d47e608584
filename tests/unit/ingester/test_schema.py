from __future__ import annotations

import msgspec
import pytest

from ingester.schema.ddl import (
    TABLES,
    add_column_ddl,
    create_table_ddl,
    insert_columns,
    insert_statement,
    parse_version,
    server_capabilities,
)
from shared.codec import RECORD_TYPES
from shared.streams import Sink

OLD = server_capabilities("18.16.1")
MODERN = server_capabilities("24.8.4.13")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("18.16.1", (18, 16, 1)), ("24.8.4.13", (24, 8, 4, 13)), ("23.3.1-lts", (23, 3, 1))],
)
def test_parse_version(text: str, expected: tuple[int, ...]) -> None:
    assert parse_version(text) == expected


def test_parse_version_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a ClickHouse version"):
        parse_version("unknown")


def test_capabilities_of_debian_server_are_the_portable_core() -> None:
    assert not (OLD.low_cardinality or OLD.ttl or OLD.skip_indexes)
    assert not OLD.add_column_if_not_exists


def test_capabilities_of_current_server() -> None:
    assert MODERN.low_cardinality and MODERN.ttl and MODERN.skip_indexes
    assert MODERN.add_column_if_not_exists


def test_capability_thresholds_fall_between_versions() -> None:
    caps = server_capabilities("19.8.3")
    assert caps.low_cardinality and caps.ttl and not caps.skip_indexes


@pytest.mark.parametrize("sink", list(Sink))
def test_portable_ddl_has_no_modern_features(sink: Sink) -> None:
    ddl = create_table_ddl("db", TABLES[sink], OLD, retention_days=30)
    for feature in ("LowCardinality", "INDEX", "TTL", "Map(", "DateTime64", "JSON"):
        assert feature not in ddl
    assert "ENGINE = ReplacingMergeTree()" in ddl
    assert "PARTITION BY toYYYYMM(created_at)" in ddl
    assert ddl.startswith(f"CREATE TABLE IF NOT EXISTS `db`.`{TABLES[sink].name}`")


def test_requests_ddl_orders_by_identity() -> None:
    ddl = create_table_ddl("db", TABLES[Sink.REQUESTS], OLD)
    assert "ORDER BY (org_id, created_at, request_id)" in ddl
    assert "`cost_usd` Nullable(Float64)" in ddl
    assert "`firewall_score` Nullable(Float32)" in ddl
    assert "`ingested_at` DateTime DEFAULT now()" in ddl
    assert "`property_keys` Array(String)" in ddl


def test_modern_ddl_adds_low_cardinality_indexes_and_ttl() -> None:
    ddl = create_table_ddl("db", TABLES[Sink.REQUESTS], MODERN, retention_days=90)
    assert "`provider` LowCardinality(String)" in ddl
    assert "`request_id` String" in ddl  # identity stays a plain String
    assert "INDEX `user_id_idx` user_id TYPE bloom_filter(0.01) GRANULARITY 4" in ddl
    assert ddl.endswith("TTL created_at + toIntervalDay(90)")


def test_modern_ddl_without_retention_has_no_ttl() -> None:
    assert "TTL" not in create_table_ddl("db", TABLES[Sink.SPANS], MODERN)


def test_up_to_leaves_out_later_columns() -> None:
    v1 = create_table_ddl("db", TABLES[Sink.REQUESTS], OLD, up_to=1)
    v2 = create_table_ddl("db", TABLES[Sink.REQUESTS], OLD, up_to=2)
    assert "cached_prompt_tokens" not in v1
    assert "`cached_prompt_tokens` UInt32" in v2


def test_add_column_uses_if_not_exists_only_where_supported() -> None:
    column = next(c for c in TABLES[Sink.REQUESTS].columns if c.name == "tokens_estimated")
    old = add_column_ddl("db", "requests", column, OLD)
    assert old == "ALTER TABLE `db`.`requests` ADD COLUMN `tokens_estimated` UInt8"
    assert "ADD COLUMN IF NOT EXISTS" in add_column_ddl("db", "requests", column, MODERN)


@pytest.mark.parametrize("sink", list(Sink))
def test_sorting_key_is_made_of_columns(sink: Sink) -> None:
    names = {c.name for c in TABLES[sink].columns}
    assert set(TABLES[sink].order_by) <= names
    assert {"created_at", "created_at_ms", "ingested_at"} <= names


@pytest.mark.parametrize("sink", list(Sink))
def test_insert_sends_every_column_but_server_defaults(sink: Sink) -> None:
    columns = insert_columns(sink)
    assert "ingested_at" not in columns
    assert len(columns) == len(TABLES[sink].columns) - 1
    assert insert_statement("db", sink).startswith(f"INSERT INTO `db`.`{TABLES[sink].name}` (")


_DERIVED_FROM = {
    "stage_latency_ms": {"stage_names", "stage_latency_ms"},
    "properties": {"property_keys", "property_values"},
    "prompt_inputs": {"prompt_input_keys", "prompt_input_values"},
    "attributes": {"attribute_keys", "attribute_values"},
    "cache_lookup_ms": {"cache_lookup_tiers", "cache_lookup_ms"},
    "request_headers": {"request_header_keys", "request_header_values"},
    "response_headers": {"response_header_keys", "response_header_values"},
}


@pytest.mark.parametrize("sink", list(Sink))
def test_every_record_field_has_a_column(sink: Sink) -> None:
    """A field added to a record without a column would be dropped silently on insert."""
    columns = set(insert_columns(sink))
    for field in msgspec.structs.fields(RECORD_TYPES[sink]):
        assert _DERIVED_FROM.get(field.name, {field.name}) <= columns, field.name
