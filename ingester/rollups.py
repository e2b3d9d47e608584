"""Rollup jobs: find the hours that changed since the last run and recompute them from raw rows.

Invariants:
- A run never trusts what it inserted before: it recomputes whole hours from the raw table read
  with ``FINAL`` (see ``ingester.rollup_sql``), so duplicate delivery and replay leave every
  figure unchanged, and a late record (replayed hours later) updates the hour it belongs to.
- Changed hours are found by ``ingested_at`` (server clock, set on insert) from the stored
  watermark minus ``overlap_s``: an insert still in flight when the previous run read the
  watermark is picked up by the next one. Recomputing an hour twice is harmless.
- The watermark moves only after every recompute of the run succeeded; a failed run is
  repeated whole by the next tick.
- Hours older than their org's retention cutoff are never recomputed: their raw rows may be
  partly deleted, and the rollup computed while they were whole must outlive them.
- On a cluster, one ``Rollups`` per shard (``run_on_shards``) recomputes from that shard's raw
  rows into its own rollup tables, with its own watermark (``ingested_at`` is that server's
  clock); ``ingester.schema.cluster`` says why partial rows per shard read back exactly.
- Blocking; one Client per ``Rollups``; call from a thread. arq cron gives each tick a unique
  job id, so one replica runs a tick; two overlapping runs (a tick and a CLI rebuild) are still
  correct, because the newer ``version`` wins and both read the same raw rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ingester.retention import Retention, create_org_settings_ddl
from ingester.rollup_sql import (
    DAY,
    HOUR,
    MEASURES,
    ROLLUPS,
    add_measure_ddl,
    changed_hours_sql,
    create_rollup_ddl,
    create_state_ddl,
    days_of,
    hour_floor,
    hour_ranges,
    read_watermark_sql,
    recompute_daily_sql,
    recompute_hourly_sql,
    write_watermark_sql,
)
from ingester.schema.cluster import Placement, local_ddl, placed_ddl, stored_table
from ingester.schema.topology import placement_of, shard_settings
from shared.clickhouse_client import clickhouse_client
from shared.settings import ClickHouseSettings
from shared.tables import REQUESTS

__all__ = [
    "RollupReport",
    "Rollups",
    "ensure_rollup_tables",
    "recomputable_hours",
    "run_on_shards",
]

log = logging.getLogger(__name__)

WATERMARK_NAME = REQUESTS


def ensure_rollup_tables(client: Any, database: str, placement: Placement | None = None) -> None:
    """CREATE … IF NOT EXISTS for every rollup table, the watermark and org_settings; called by
    the schema migration (and safe to call again). On a cluster node: local rollup tables with
    ``Distributed`` ones over them; the watermark and org_settings stay per shard."""
    placement = placement or Placement()
    for spec in ROLLUPS.values():
        for granularity in (HOUR, DAY):
            ddl = create_rollup_ddl(database, spec, granularity)
            for table, statement in placed_ddl(ddl, placement):  # local, then distributed
                client.execute(statement)
                _add_missing_measures(client, database, table)
    client.execute(local_ddl(create_state_ddl(database), placement, distributed=False))
    client.execute(local_ddl(create_org_settings_ddl(database), placement, distributed=False))


def _add_missing_measures(client: Any, database: str, table: str) -> None:
    rows = client.execute(
        "SELECT name FROM system.columns WHERE database = %(db)s AND table = %(t)s",
        {"db": database, "t": table},
    )
    existing = {str(name) for (name,) in rows}
    for measure in MEASURES:
        if measure.name not in existing:
            client.execute(add_measure_ddl(database, table, measure))
            log.info("rollup table %s: added measure %s", table, measure.name)


def recomputable_hours(
    changed: Iterable[tuple[str, int]], cutoffs: dict[str, int], default_cutoff: int
) -> dict[str, list[int]]:
    """org → the changed hours still inside its retention (older ones keep their rollup)."""
    by_org: dict[str, list[int]] = {}
    for org, hour in changed:
        if hour >= cutoffs.get(org, default_cutoff):
            by_org.setdefault(org, []).append(hour)
    return by_org


@dataclass
class RollupReport:
    hours: int = 0
    orgs: list[str] = field(default_factory=list)
    skipped_expired: int = 0
    watermark: int = 0


class Rollups:
    """Recomputes the rollups of ``clickhouse.database`` from its raw ``requests`` table."""

    def __init__(
        self,
        clickhouse: ClickHouseSettings,
        *,
        default_retention_days: int = 30,
        overlap_s: int = 600,
    ) -> None:
        self.database = clickhouse.database
        self.cluster = clickhouse.cluster
        self.overlap_s = overlap_s
        self._client = clickhouse_client(clickhouse)
        self._retention = Retention(clickhouse, default_days=default_retention_days)

    def _run(self, query: str, params: Any = None) -> Any:
        return self._client.execute(query, params)

    def ensure_tables(self) -> None:
        placement = placement_of(self._client, self.cluster)
        ensure_rollup_tables(self._client, self.database, placement)

    def watermark(self) -> int:
        rows = self._run(read_watermark_sql(self.database), {"name": WATERMARK_NAME})
        return int(rows[0][0]) if rows else 0

    def run_changed(self) -> RollupReport:
        """One cron tick: recompute every hour with rows ingested since the last watermark."""
        server_now = int(self._run("SELECT toUInt32(now())")[0][0])
        since = max(self.watermark() - self.overlap_s, 0)
        changed = [
            (str(org), int(hour))
            for org, hour in self._run(
                changed_hours_sql(self.database, cluster=self.cluster), {"since": since}
            )
        ]
        report = self._recompute(changed, server_now)
        self._run(
            write_watermark_sql(self.database),
            [(WATERMARK_NAME, server_now, time.time_ns() // 1000)],
        )
        report.watermark = server_now
        return report

    def rebuild(self, start: int, end: int, org_ids: Iterable[str] | None = None) -> RollupReport:
        """Recompute every hour of ``[start, end)`` (unix seconds) for the given orgs, or every
        org with raw rows in the range."""
        start, end = hour_floor(start), hour_floor(end + HOUR - 1)
        if org_ids is None:
            rows = self._run(
                f"SELECT DISTINCT org_id FROM `{self.database}`."
                f"`{stored_table(REQUESTS, self.cluster)}` "
                "WHERE created_at >= toDateTime(%(start)s) AND created_at < toDateTime(%(end)s)",
                {"start": start, "end": end},
            )
            org_ids = [str(r[0]) for r in rows]
        hours = range(start, end, HOUR)
        changed = [(org, hour) for org in org_ids for hour in hours]
        return self._recompute(changed, int(self._run("SELECT toUInt32(now())")[0][0]))

    def _recompute(self, changed: list[tuple[str, int]], now: int) -> RollupReport:
        per_org, default_cutoff = self._retention.cutoffs(now)
        by_org = recomputable_hours(changed, per_org, default_cutoff)
        report = RollupReport(skipped_expired=len(changed) - sum(map(len, by_org.values())))
        if report.skipped_expired:
            log.info("rollups: %d expired hour(s) keep their rollup", report.skipped_expired)
        for org, hours in sorted(by_org.items()):
            self.recompute_org(org, hours)
            report.hours += len(hours)
            report.orgs.append(org)
        return report

    def recompute_org(self, org_id: str, hours: Iterable[int]) -> None:
        """Hourly rows of ``hours``, then the daily rows of the days they touch."""
        version = time.time_ns() // 1000
        ranges = hour_ranges(hours)
        for spec in ROLLUPS.values():
            statement = recompute_hourly_sql(self.database, spec, cluster=self.cluster)
            for start, end in ranges:
                params = {"org_id": org_id, "start": start, "end": end, "version": version}
                self._run(statement, params)
        for spec in ROLLUPS.values():
            statement = recompute_daily_sql(self.database, spec, cluster=self.cluster)
            for start, end in days_of(ranges):
                params = {"org_id": org_id, "start": start, "end": end, "version": version}
                self._run(statement, params)

    def close(self) -> None:
        self._client.disconnect()
        self._retention.close()


def run_on_shards(
    clickhouse: ClickHouseSettings,
    action: Callable[[Rollups], RollupReport],
    *,
    default_retention_days: int = 30,
    overlap_s: int = 600,
) -> RollupReport:
    """``action`` on one ``Rollups`` per shard (just one without a cluster), reports summed."""
    total = RollupReport()
    for shard in shard_settings(clickhouse):
        rollups = Rollups(shard, default_retention_days=default_retention_days, overlap_s=overlap_s)
        try:
            rollups.ensure_tables()
            report = action(rollups)
        finally:
            rollups.close()
        total.hours += report.hours
        total.orgs = sorted({*total.orgs, *report.orgs})
        total.skipped_expired += report.skipped_expired
        total.watermark = max(total.watermark, report.watermark)
    return total
