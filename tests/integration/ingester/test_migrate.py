from __future__ import annotations

import pytest

from devstack.servers import ClickHouseServer
from ingester.schema.ddl import TABLES
from ingester.schema.migrate import MIGRATIONS, migrate
from shared.clickhouse_client import clickhouse_client
from shared.settings import ClickHouseSettings
from shared.streams import Sink
from tests.integration.ingester.clickhouse_helpers import query, unique_settings

pytestmark = pytest.mark.integration

TABLE_NAMES = {"requests", "spans", "breaker_events", "schema_migrations"}  # and rollups


def _columns(settings: ClickHouseSettings, table: str) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = query(
        settings,
        "SELECT name, type FROM system.columns WHERE database = %(db)s AND table = %(t)s",
        {"db": settings.database, "t": table},
    )
    return rows


def test_migrate_creates_everything_and_rerun_is_a_noop(
    clickhouse_server: ClickHouseServer,
) -> None:
    settings = unique_settings(clickhouse_server)
    assert migrate(settings) == [m.version for m in MIGRATIONS]
    assert migrate(settings) == []
    tables = query(
        settings,
        "SELECT name FROM system.tables WHERE database = %(db)s",
        {"db": settings.database},
    )
    assert {name for (name,) in tables} >= TABLE_NAMES
    recorded = query(settings, "SELECT version FROM {db}.schema_migrations ORDER BY version")
    assert recorded == [(m.version,) for m in MIGRATIONS]
    for sink, spec in TABLES.items():
        expected = {c.name: c.type for c in spec.columns}
        assert dict(_columns(settings, spec.name)) == expected, sink
    engine = query(
        settings,
        "SELECT engine FROM system.tables WHERE database = %(db)s AND name = 'requests'",
        {"db": settings.database},
    )
    assert engine == [("ReplacingMergeTree",)]


def test_newer_migration_adds_columns_to_existing_tables(
    clickhouse_server: ClickHouseServer,
) -> None:
    settings = unique_settings(clickhouse_server)
    assert migrate(settings, migrations=MIGRATIONS[:1]) == [1]
    names = {name for name, _ in _columns(settings, "requests")}
    assert "cached_prompt_tokens" not in names
    query(
        settings,
        "INSERT INTO {db}.requests (request_id, org_id, created_at, created_at_ms) VALUES",
        [("r1", "o1", 1790000000, 1790000000000)],
    )
    assert migrate(settings) == [m.version for m in MIGRATIONS[1:]]
    columns = dict(_columns(settings, "requests"))
    assert columns["cached_prompt_tokens"] == "UInt32"
    assert columns["tokens_estimated"] == "UInt8"
    rows = query(settings, "SELECT request_id, cached_prompt_tokens FROM {db}.requests FINAL")
    assert rows == [("r1", 0)]


def test_half_applied_migration_is_finished(clickhouse_server: ClickHouseServer) -> None:
    """A migrator that died after adding one column but before recording the migration."""
    settings = unique_settings(clickhouse_server)
    migrate(settings, migrations=MIGRATIONS[:1])
    query(settings, "ALTER TABLE {db}.requests ADD COLUMN cached_prompt_tokens UInt32")
    assert migrate(settings) == [m.version for m in MIGRATIONS[1:]]
    assert "tokens_estimated" in {name for name, _ in _columns(settings, "requests")}


def test_migrate_with_a_client_leaves_it_open(clickhouse_server: ClickHouseServer) -> None:
    settings = unique_settings(clickhouse_server)
    client = clickhouse_client(settings)
    try:
        assert migrate(client, settings.database) == [m.version for m in MIGRATIONS]
        assert client.execute("SELECT 1") == [(1,)]
        with pytest.raises(ValueError, match="database"):
            migrate(client)
    finally:
        client.disconnect()


def test_ingested_at_is_filled_by_the_server(clickhouse_server: ClickHouseServer) -> None:
    settings = unique_settings(clickhouse_server)
    migrate(settings)
    query(
        settings,
        "INSERT INTO {db}.breaker_events (event_id, provider, created_at, "
        "created_at_ms, from_state, to_state) VALUES",
        [("e", "p", 1, 1000, "closed", "open")],
    )
    ((ingested,),) = query(settings, "SELECT toUInt32(ingested_at) FROM {db}.breaker_events")
    assert ingested > 1_700_000_000
    assert Sink.BREAKER_EVENTS in TABLES
