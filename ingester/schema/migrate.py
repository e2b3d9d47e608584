"""Create and upgrade the ClickHouse schema, idempotently.

Invariants:
- Migration ``n`` brings every table to the columns with ``since <= n`` (CREATE TABLE IF NOT
  EXISTS, then ADD COLUMN for each column ``system.columns`` lacks), so a step that crashed
  halfway is finished by running it again, and two ingesters migrating at once both succeed.
- Replicated tables (a cluster with ZooKeeper) are created with the newest columns at once, as
  the shard's other replicas have them in ZooKeeper; a replica added after an upgrade gets its
  columns in spec order, which 18.16 may refuse if the first replicas had them appended by
  ALTERs: create it from a sibling's ``SHOW CREATE TABLE`` then.
- A migration is recorded in ``<db>.schema_migrations`` only after all its statements ran;
  recorded migrations are skipped, so re-running ``migrate`` is a no-op.
- The DDL depends on the server version (``server_capabilities``): the portable core on 18.16,
  LowCardinality / skip indexes / TTL on servers that have them.
- On a cluster (``cluster`` set), every node listed in ``system.clusters`` is migrated the same
  way, each with its local tables and the ``Distributed`` tables over them
  (``ingester.schema.cluster``); no ``ON CLUSTER`` DDL, so no coordination service is needed
  unless the tables are to be replicated. A node's own ``schema_migrations`` says what it has.
- Blocking: call from a thread. A client passed in stays open; one made from settings is
  disconnected before returning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException

from ingester.schema.cluster import Placement, placed_ddl
from ingester.schema.ddl import (
    TABLES,
    Capabilities,
    TableSpec,
    add_column_ddl,
    create_database_ddl,
    create_table_ddl,
    server_capabilities,
)
from ingester.schema.topology import cluster_nodes, placement_of
from shared.clickhouse_client import clickhouse_client
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


def _add_missing_columns(
    client: Client, database: str, table: str, spec: TableSpec, *, version: int, caps: Capabilities
) -> None:
    existing = _existing_columns(client, database, table)
    for column in spec.columns:
        if column.since > version or column.name in existing:
            continue
        try:
            client.execute(add_column_ddl(database, table, column, caps))
        except ServerException as exc:
            if exc.code != _DUPLICATE_COLUMN:
                raise
            log.info("column %s.%s added concurrently", table, column.name)


def _apply(
    client: Client,
    database: str,
    migration: Migration,
    caps: Capabilities,
    *,
    retention_days: int | None,
    placement: Placement,
    newest: int,
) -> None:
    # A replicated table must be created as its shard's other replicas have it in ZooKeeper by
    # now (the newest columns), or the server refuses it ("structure ... too different").
    up_to = newest if placement.replicated else migration.version
    for spec in TABLES.values():
        ddl = create_table_ddl(database, spec, caps, up_to=up_to, retention_days=retention_days)
        for table, statement in placed_ddl(ddl, placement, spec.shard_by):
            client.execute(statement)
            _add_missing_columns(
                client, database, table, spec, version=migration.version, caps=caps
            )
    client.execute(
        f"INSERT INTO `{database}`.schema_migrations (version, name) VALUES",
        [(migration.version, migration.name)],
    )
    log.info("applied migration %d (%s) to %s", migration.version, migration.name, database)


def _migrate_node(
    client: Client,
    database: str,
    migrations: tuple[Migration, ...],
    retention_days: int | None,
    cluster: str,
) -> list[int]:
    (version,) = client.execute("SELECT version()")[0]
    caps = server_capabilities(str(version))
    placement = placement_of(client, cluster)
    _ensure_migrations_table(client, database)
    done = applied_migrations(client, database)
    applied = []
    for migration in sorted(migrations, key=lambda m: m.version):
        if migration.version in done:
            continue
        _apply(
            client,
            database,
            migration,
            caps,
            retention_days=retention_days,
            placement=placement,
            newest=max(m.version for m in migrations),
        )
        applied.append(migration.version)
    from ingester.rollups import ensure_rollup_tables  # rollups import the sink: late

    ensure_rollup_tables(client, database, placement)  # CREATE IF NOT EXISTS: cheap, idempotent
    return applied


def _migrate_cluster(
    settings: ClickHouseSettings,
    database: str,
    migrations: tuple[Migration, ...],
    retention_days: int | None,
) -> list[int]:
    seed = clickhouse_client(settings)
    try:
        nodes = cluster_nodes(seed, settings.cluster)
    finally:
        seed.disconnect()
    applied: set[int] = set()
    for node in nodes:
        client = clickhouse_client(node.settings(settings))
        try:
            done = _migrate_node(client, database, migrations, retention_days, settings.cluster)
        finally:
            client.disconnect()
        log.info("%s: shard %d replica %d migrated", settings.cluster, node.shard, node.replica)
        applied.update(done)
    return sorted(applied)


def migrate(
    target: Client | ClickHouseSettings,
    database: str | None = None,
    *,
    retention_days: int | None = None,
    migrations: tuple[Migration, ...] = MIGRATIONS,
    cluster: str | None = None,
) -> list[int]:
    """Create the database and tables and apply pending migrations; returns the versions
    applied now (empty when the schema was already current). ``database`` defaults to the
    settings' database and is required with a bare Client. ``cluster`` (default: the settings'
    ``cluster``) migrates every node of that cluster; with a bare Client, that node only."""
    if isinstance(target, ClickHouseSettings):
        cluster = target.cluster if cluster is None else cluster
        database = database or target.database
        if cluster:
            settings = target.model_copy(update={"cluster": cluster})
            return _migrate_cluster(settings, database, migrations, retention_days)
        client, owned = clickhouse_client(target), True
    else:
        client, owned = target, False
    if not database:
        raise ValueError("migrate(client) needs the database name")
    try:
        return _migrate_node(client, database, migrations, retention_days, cluster or "")
    finally:
        if owned:
            client.disconnect()
