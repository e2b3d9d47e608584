"""Where tables live on a cluster: names, engines and the DDL, as text (no server)."""

from __future__ import annotations

import pytest

from ingester.rollup_sql import (
    ROLLUPS,
    changed_hours_sql,
    create_state_ddl,
    recompute_daily_sql,
    recompute_hourly_sql,
)
from ingester.schema.cluster import (
    Placement,
    distributed_ddl,
    local_ddl,
    placed_ddl,
    stored_table,
)
from ingester.schema.ddl import TABLES, create_table_ddl, server_capabilities
from shared.streams import Sink

CAPS = server_capabilities("18.16.1")
REQUESTS = create_table_ddl("db", TABLES[Sink.REQUESTS], CAPS)


def test_rows_live_under_the_logical_name_on_one_server_and_local_on_a_cluster() -> None:
    assert stored_table("requests", "") == "requests"
    assert stored_table("requests", "main") == "requests_local"


def test_one_server_keeps_the_statement_as_it_is() -> None:
    assert placed_ddl(REQUESTS, Placement()) == [("requests", REQUESTS)]


def test_a_cluster_node_gets_a_local_table_and_a_distributed_one_by_record_id() -> None:
    (local_name, local), (name, dist) = placed_ddl(REQUESTS, Placement("main"), "request_id")
    assert (local_name, name) == ("requests_local", "requests")
    assert local.startswith("CREATE TABLE IF NOT EXISTS `db`.`requests_local` (")
    assert "ENGINE = ReplacingMergeTree()" in local
    assert dist == (
        "CREATE TABLE IF NOT EXISTS `db`.`requests` AS `db`.`requests_local`\n"
        "ENGINE = Distributed(`main`, `db`, `requests_local`, cityHash64(`request_id`))"
    )


def test_with_zookeeper_local_tables_are_replicated_per_shard() -> None:
    local = local_ddl(REQUESTS, Placement("main", replicated=True), distributed=True)
    assert (
        "ENGINE = ReplicatedReplacingMergeTree("
        "'/clickhouse/tables/{shard}/db/requests_local', '{replica}')" in local
    )
    state = local_ddl(create_state_ddl("db"), Placement("main", True), distributed=False)
    assert "`db`.`rollup_state` (" in state  # per-shard state keeps its name
    assert (
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/rollup_state', "
        "'{replica}', version)" in state
    )


def test_rollup_tables_have_no_sharding_key_so_nothing_is_inserted_through_them() -> None:
    assert distributed_ddl("db", "rollup_hourly", "main").endswith(
        "Distributed(`main`, `db`, `rollup_hourly_local`)"
    )


def test_only_our_create_statements_are_placed() -> None:
    with pytest.raises(ValueError, match="CREATE TABLE IF NOT EXISTS"):
        placed_ddl("DROP TABLE x", Placement("main"))


def test_rollups_on_a_cluster_read_and_write_the_shards_own_tables() -> None:
    spec = ROLLUPS["org"]
    hourly = recompute_hourly_sql("db", spec, cluster="main")
    assert "INSERT INTO `db`.`rollup_hourly_local`" in hourly
    assert "FROM `db`.`requests_local` FINAL" in hourly
    daily = recompute_daily_sql("db", spec, cluster="main")
    assert "INSERT INTO `db`.`rollup_daily_local`" in daily
    assert "FROM `db`.`rollup_hourly_local` FINAL" in daily
    assert "FROM `db`.`requests_local`" in changed_hours_sql("db", cluster="main")
    assert "FROM `db`.`requests` FINAL" in recompute_hourly_sql("db", spec)
