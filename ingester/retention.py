"""Raw-log retention: each org's plan says how many days of raw rows it keeps; rollups outlive them.

Where retention lives: ClickHouse table ``org_settings`` (org_id, retention_days, updated_at),
a ``ReplacingMergeTree(updated_at)`` read with ``FINAL``. Plans live in the gateway's key store;
it mirrors each org's days into one Redis hash (``shared.streams.retention_key``), and the
retention job copies what changed into ``org_settings`` before it enforces
(``floopy-ingester rollups retention --org X --days N`` writes a row by hand). The ingester
never imports the gateway. An org without a row keeps ``default_days``.

Invariants:
- Cutoffs are whole UTC days: a raw row is kept while ``created_at >= start of today (UTC) -
  days``. Rollups never recompute an hour before its org's cutoff (``ingester.rollups``), so a
  half-deleted hour can never overwrite the rollup computed while it was whole.
- A partition (``toYYYYMM(created_at)``) whose rows are all expired for every org in it is
  dropped whole (cheap, immediate). Anything else expired goes in one ``ALTER TABLE … DELETE``
  mutation per table; no new mutation is issued while one of ours is still running on that
  table, so a slow server never piles up rewrites.
- On servers with TTL (19.6+) the table also gets ``TTL created_at + <longest retention>`` as
  a backstop; 18.16 has no TTL and relies on the mutations alone.
- On a cluster a ``Retention`` is made per shard (``ingester.schema.topology.shard_settings``)
  and acts on that shard's local tables and its own ``org_settings``; with replication, drops
  and mutations reach the shard's other replicas through the coordination service.
- Blocking; one Client per ``Retention``; call from a thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ingester.rollup_sql import DAY, day_floor
from ingester.schema.cluster import local_ddl, stored_table
from ingester.schema.ddl import server_capabilities
from ingester.schema.topology import placement_of
from shared.clickhouse_client import clickhouse_client
from shared.settings import ClickHouseSettings
from shared.tables import BREAKER_EVENTS, ORG_SETTINGS, REQUESTS, SPANS

__all__ = [
    "ORG_COLUMNS",
    "Retention",
    "RetentionPlan",
    "RetentionReport",
    "create_org_settings_ddl",
    "cutoff_for",
    "delete_sql",
    "plan_retention",
    "ttl_sql",
]

log = logging.getLogger(__name__)

ORG_COLUMNS: dict[str, str | None] = {
    REQUESTS: "org_id",
    SPANS: "org_id",
    BREAKER_EVENTS: None,  # provider-wide events: no org, the default retention applies
}


def create_org_settings_ddl(database: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{ORG_SETTINGS}` (\n"
        "    `org_id` String,\n    `retention_days` UInt32,\n    `updated_at` DateTime\n)\n"
        "ENGINE = ReplacingMergeTree(updated_at)\nORDER BY org_id"
    )


def cutoff_for(days: int, now: int) -> int:
    """The first unix second still kept: start of today (UTC) minus ``days`` days."""
    return day_floor(now) - max(days, 0) * DAY


@dataclass(frozen=True)
class RetentionPlan:
    """What to do to one table: partitions to drop whole, and org → cutoff to delete below."""

    drop_partitions: tuple[str, ...] = ()
    delete_before: Mapping[str, int] = field(default_factory=dict)


def plan_retention(
    survey: Iterable[tuple[str, str, int, int]],
    cutoffs: Mapping[str, int],
    default_cutoff: int,
) -> RetentionPlan:
    """``survey`` rows are (partition, org_id, min created_at, max created_at).

    A partition is dropped when every org in it is wholly expired; the orgs with expired rows in
    the partitions that stay get a delete below their cutoff."""
    by_partition: dict[str, list[tuple[str, int, int]]] = {}
    for partition, org, lo, hi in survey:
        by_partition.setdefault(partition, []).append((org, lo, hi))
    drop: list[str] = []
    delete: dict[str, int] = {}
    for partition, rows in sorted(by_partition.items()):
        if all(hi < cutoffs.get(org, default_cutoff) for org, _, hi in rows):
            drop.append(partition)
            continue
        for org, lo, _ in rows:
            cutoff = cutoffs.get(org, default_cutoff)
            if lo < cutoff:
                delete[org] = cutoff
    return RetentionPlan(tuple(drop), delete)


def delete_sql(database: str, table: str, org_column: str | None, n_orgs: int) -> str:
    """One mutation for every expired org of a table. Params: o<i>, c<i> for i < n_orgs."""
    if org_column is None:
        where = "created_at < toDateTime(%(c0)s)"
    else:
        where = " OR ".join(
            f"(`{org_column}` = %(o{i})s AND created_at < toDateTime(%(c{i})s))"
            for i in range(n_orgs)
        )
    return f"ALTER TABLE `{database}`.`{table}` DELETE WHERE {where}"


def ttl_sql(database: str, table: str, days: int) -> str:
    return f"ALTER TABLE `{database}`.`{table}` MODIFY TTL created_at + toIntervalDay({int(days)})"


@dataclass
class RetentionReport:
    dropped_partitions: dict[str, list[str]] = field(default_factory=dict)
    deleted_orgs: dict[str, list[str]] = field(default_factory=dict)
    skipped_busy: list[str] = field(default_factory=list)


class Retention:
    """Enforces the retention of every org on the raw tables of ``clickhouse.database``."""

    def __init__(self, clickhouse: ClickHouseSettings, *, default_days: int = 30) -> None:
        self.database = clickhouse.database
        self.cluster = clickhouse.cluster
        self.default_days = default_days
        self._client = clickhouse_client(clickhouse)

    def _run(self, query: str, params: Any = None) -> Any:
        return self._client.execute(query, params)

    def ensure_table(self) -> None:
        placement = placement_of(self._client, self.cluster)
        self._run(local_ddl(create_org_settings_ddl(self.database), placement, distributed=False))

    def _stored(self, table: str) -> str:
        return stored_table(table, self.cluster)

    def set_days(self, org_id: str, days: int) -> None:
        self.sync_days({org_id: days})

    def sync_days(self, plans: Mapping[str, int]) -> list[str]:
        """Store the plans' retention for the orgs whose days changed; returns those orgs."""
        stored = self.days_by_org()
        changed = sorted(org for org, days in plans.items() if stored.get(org) != days)
        if changed:
            now = int(time.time())
            self._run(
                f"INSERT INTO `{self.database}`.`{ORG_SETTINGS}` "
                "(org_id, retention_days, updated_at) VALUES",
                [(org, plans[org], now) for org in changed],
            )
        return changed

    def days_by_org(self) -> dict[str, int]:
        rows = self._run(
            f"SELECT org_id, retention_days FROM `{self.database}`.`{ORG_SETTINGS}` FINAL"
        )
        return {str(org): int(days) for org, days in rows}

    def cutoffs(self, now: int) -> tuple[dict[str, int], int]:
        """Per-org cutoffs and the default one, at ``now`` (unix seconds)."""
        per_org = {org: cutoff_for(days, now) for org, days in self.days_by_org().items()}
        return per_org, cutoff_for(self.default_days, now)

    def enforce(self, now: int | None = None) -> RetentionReport:
        now = int(time.time()) if now is None else now
        per_org, default_cutoff = self.cutoffs(now)
        report = RetentionReport()
        for table, org_column in ORG_COLUMNS.items():
            self._enforce_table(table, org_column, per_org, default_cutoff, report)
        self._apply_ttl()
        return report

    def _survey(self, table: str, org_column: str | None) -> list[tuple[str, str, int, int]]:
        org = f"`{org_column}`" if org_column else "''"
        rows = self._run(
            f"SELECT toString(toYYYYMM(created_at)) AS p, {org} AS org, "
            "toUInt32(min(created_at)), toUInt32(max(created_at)) "
            f"FROM `{self.database}`.`{self._stored(table)}` GROUP BY p, org"
        )
        return [(str(p), str(o), int(lo), int(hi)) for p, o, lo, hi in rows]

    def _busy(self, table: str) -> bool:
        rows = self._run(
            "SELECT count() FROM system.mutations WHERE database = %(db)s AND table = %(t)s "
            "AND is_done = 0",
            {"db": self.database, "t": self._stored(table)},
        )
        return bool(rows[0][0])

    def _enforce_table(
        self,
        table: str,
        org_column: str | None,
        per_org: Mapping[str, int],
        default_cutoff: int,
        report: RetentionReport,
    ) -> None:
        plan = plan_retention(self._survey(table, org_column), per_org, default_cutoff)
        for partition in plan.drop_partitions:
            self._run(
                f"ALTER TABLE `{self.database}`.`{self._stored(table)}` "
                f"DROP PARTITION {int(partition)}"
            )
            log.info("retention: dropped partition %s of %s", partition, table)
        report.dropped_partitions[table] = list(plan.drop_partitions)
        if not plan.delete_before:
            return
        if self._busy(table):
            log.warning("retention: a mutation is still running on %s; deleting later", table)
            report.skipped_busy.append(table)
            return
        params: dict[str, Any] = {}
        for i, (org, cutoff) in enumerate(sorted(plan.delete_before.items())):
            params[f"o{i}"], params[f"c{i}"] = org, cutoff
        n_orgs = len(plan.delete_before)
        self._run(delete_sql(self.database, self._stored(table), org_column, n_orgs), params)
        report.deleted_orgs[table] = sorted(plan.delete_before)
        log.info("retention: deleting expired rows of %d org(s) in %s", len(params) // 2, table)

    def _apply_ttl(self) -> None:
        version = str(self._run("SELECT version()")[0][0])
        if not server_capabilities(version).ttl:
            return
        longest = max([self.default_days, *self.days_by_org().values()])
        for table in ORG_COLUMNS:
            self._run(ttl_sql(self.database, self._stored(table), longest + 1))

    def close(self) -> None:
        self._client.disconnect()
