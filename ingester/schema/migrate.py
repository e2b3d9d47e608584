"""Create and upgrade the ClickHouse schema, idempotently.

Invariants:
- Migration ``n`` brings every table to the columns with ``since <= n`` (CREATE TABLE IF NOT
  EXISTS, then ADD COLUMN for each column ``system.columns`` lacks), so a step that crashed
  halfway is finished by running it again, and two ingesters migrating at once both succeed.
- A migration is recorded in ``<db>.schema_migrations`` only after all its statements ran;
  recorded migrations are skipped, so re-running ``migrate`` is a no-op.
- The DDL depends on the server version (``server_capabilities``): the portable core on 18.16,
  LowCardinality / skip indexes / TTL on servers that have them.
- Blocking: call from a thread. A client passed in stays open; one made from settings is
  disconnected before returning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException

from ingester.schema.ddl import (
    TABLES,
    Capabilities,
    add_column_ddl,
    create_database_ddl,
    create_table_ddl,
    server_capabilities,
)
from shared.settings import ClickHouseSettings

__all__ = ["MIGRATIONS", "Migration", "applied_migrations", "migrate"]

log = logging.getLogger(__name__)

_DUPLICATE_COLUMN = 15  # another migrator added it between our check and our ALTER


@dataclass(frozen=True)
class Migration:
    version: int
    name: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "core tables: requests, spans, breaker_events"),
    Migration(2, "record v2: requests.cached_prompt_tokens, requests.tokens_estimated"),
    Migration(3, "record v3: cache and firewall outcome in full, request and response headers"),
)


def _ensure_migrations_table(client: Client, database: str) -> None:
    client.execute(create_database_ddl(database))
    client.execute(
        f"CREATE TABLE IF NOT EXISTS `{database}`.schema_migrations ("
        "version UInt32, name String, applied_at DateTime DEFAULT now()) "
        "ENGINE = ReplacingMergeTree() ORDER BY version"
    )


def applied_migrations(client: Client, database: str) -> set[int]:
    rows = client.execute(f"SELECT DISTINCT version FROM `{database}`.schema_migrations")
    return {int(v) for (v,) in rows}


def _existing_columns(client: Client, database: str, table: str) -> set[str]:
    rows = client.execute(
        "SELECT name FROM system.columns WHERE database = %(db)s AND table = %(t)s",
        {"db": database, "t": table},
    )
    return {str(name) for (name,) in rows}


def _apply(
    client: Client,
    database: str,
    migration: Migration,
    caps: Capabilities,
    retention_days: int | None,
) -> None:
    for spec in TABLES.values():
        ddl = create_table_ddl(
            database, spec, caps, up_to=migration.version, retention_days=retention_days
        )
        client.execute(ddl)
        existing = _existing_columns(client, database, spec.name)
        for column in spec.columns:
            if column.since > migration.version or column.name in existing:
                continue
            try:
                client.execute(add_column_ddl(database, spec.name, column, caps))
            except ServerException as exc:
                if exc.code != _DUPLICATE_COLUMN:
                    raise
                log.info("column %s.%s added concurrently", spec.name, column.name)
    client.execute(
        f"INSERT INTO `{database}`.schema_migrations (version, name) VALUES",
        [(migration.version, migration.name)],
    )
    log.info("applied migration %d (%s) to %s", migration.version, migration.name, database)


def migrate(
    target: Client | ClickHouseSettings,
    database: str | None = None,
    *,
    retention_days: int | None = None,
    migrations: tuple[Migration, ...] = MIGRATIONS,
) -> list[int]:
    """Create the database and tables and apply pending migrations; returns the versions
    applied now (empty when the schema was already current). ``database`` defaults to the
    settings' database and is required with a bare Client."""
    if isinstance(target, ClickHouseSettings):
        from ingester.sink import client_for  # sink imports the schema package: import late

        client, owned = client_for(target), True
        database = database or target.database
    else:
        client, owned = target, False
    if not database:
        raise ValueError("migrate(client) needs the database name")
    try:
        (version,) = client.execute("SELECT version()")[0]
        caps = server_capabilities(str(version))
        _ensure_migrations_table(client, database)
        done = applied_migrations(client, database)
        applied = []
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version in done:
                continue
            _apply(client, database, migration, caps, retention_days)
            applied.append(migration.version)
        from ingester.rollups import ensure_rollup_tables  # rollups import the sink: late

        ensure_rollup_tables(client, database)  # CREATE IF NOT EXISTS: cheap, idempotent
        return applied
    finally:
        if owned:
            client.disconnect()
