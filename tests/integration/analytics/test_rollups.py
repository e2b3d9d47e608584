"""Rollups against a real ClickHouse: exact after every record was delivered twice, late records
update their own hour, a rebuild equals the incremental result, percentiles are close to exact."""

from __future__ import annotations

import shutil
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import msgspec
import pytest

from ingester.delivery import Delivery
from ingester.replay import Replayer, ReplayStatus
from ingester.rollup_sql import HOUR, MEASURES, ROLLUPS, create_rollup_ddl
from ingester.rollups import Rollups, ensure_rollup_tables
from shared.clickhouse_client import clickhouse_client
from shared.codec import encode_record
from shared.records import RequestRecord
from shared.settings import ClickHouseSettings
from shared.spool.writer import SpoolWriter
from shared.streams import Sink

from .conftest import Deliver, dataset

pytestmark = pytest.mark.integration

FIGURES = (
    "sum(requests), sum(errors), sum(cache_hits), sum(cost_usd), sum(prompt_tokens), "
    "sum(completion_tokens), sum(total_tokens)"
)


def query(ch: ClickHouseSettings, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    client = clickhouse_client(ch)
    try:
        return [tuple(r) for r in client.execute(sql.replace("DB", f"`{ch.database}`"), params)]
    finally:
        client.disconnect()


def expected(records: list[RequestRecord], bucket_s: int) -> dict[tuple[str, int], tuple[Any, ...]]:
    acc: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0.0] * 7)
    for r in records:
        a = acc[(r.org_id, r.created_at_ms // 1000 // bucket_s * bucket_s)]
        a[0] += 1
        a[1] += r.status_code >= 400 or r.error_code != ""
        a[2] += r.cache_status == "hit"
        a[3] += r.cost_usd or 0.0
        a[4] += r.prompt_tokens
        a[5] += r.completion_tokens
        a[6] += r.total_tokens
    return {k: tuple(v) for k, v in acc.items()}


def actual(ch: ClickHouseSettings, table: str) -> dict[tuple[str, int], tuple[Any, ...]]:
    rows = query(
        ch,
        f"SELECT org_id, toUInt32(bucket), {FIGURES} FROM DB.{table} FINAL GROUP BY org_id, bucket",
    )
    return {(r[0], r[1]): tuple(float(x) for x in r[2:]) for r in rows}


def assert_same(got: dict[Any, tuple[Any, ...]], want: dict[Any, tuple[Any, ...]]) -> None:
    """Counts equal exactly; sums of float costs equal to float precision."""
    assert got.keys() == want.keys()
    for key, row in want.items():
        assert got[key] == pytest.approx(row, rel=1e-9, abs=1e-9), key


def test_rollups_equal_raw_totals_after_every_record_was_delivered_twice(
    ch: ClickHouseSettings, deliver: Deliver, rollups: Rollups
) -> None:
    records = dataset(1500, days=2)
    query(ch, "SYSTEM STOP MERGES DB.requests")  # keep the duplicates visible to the rollups
    deliver(records[:700])
    rollups.run_changed()
    deliver(records[700:])
    deliver(records)  # the whole batch again, as a replay after a crash would
    rollups.run_changed()
    assert query(ch, "SELECT count() FROM DB.requests")[0][0] == 2 * len(records)
    for table, bucket in (("rollup_hourly", 3600), ("rollup_daily", 86400)):
        assert_same(actual(ch, table), expected(records, bucket))
    for table in ("rollup_user_daily", "rollup_property_daily"):
        users_or_props = query(ch, f"SELECT sum(requests) FROM DB.{table} FINAL")[0][0]
        assert users_or_props > 0
    assert query(ch, "SELECT sum(requests) FROM DB.rollup_user_daily FINAL")[0][0] == sum(
        1 for r in records if r.user_id
    )
    feature = query(
        ch,
        "SELECT property_value, sum(requests) FROM DB.rollup_property_daily FINAL "
        "WHERE property_key = 'feature' GROUP BY property_value",
    )
    want: dict[str, int] = defaultdict(int)
    for r in records:
        want[r.properties["feature"]] += 1
    assert dict(feature) == want

    before = actual(ch, "rollup_hourly")
    deliver(records[:300])  # redelivered once more: a new run changes nothing
    rollups.run_changed()
    assert actual(ch, "rollup_hourly") == before


def test_a_late_record_updates_only_its_own_hour(
    ch: ClickHouseSettings, deliver: Deliver, rollups: Rollups
) -> None:
    records = dataset(400, days=2)
    deliver(records)
    rollups.run_changed()
    before = actual(ch, "rollup_hourly")
    late = msgspec.structs.replace(records[10], request_id="late-0001", cost_usd=1.0)
    hour = (late.org_id, late.created_at_ms // 1000 // 3600 * 3600)
    deliver([late])
    report = rollups.run_changed()
    after = actual(ch, "rollup_hourly")
    assert after[hour][0] == before[hour][0] + 1
    assert after[hour][3] == pytest.approx(before[hour][3] + 1.0)
    assert_same(
        {k: v for k, v in after.items() if k != hour},
        {k: v for k, v in before.items() if k != hour},
    )
    assert report.hours >= 1 and late.org_id in report.orgs


def test_rebuild_equals_the_incremental_rollups(
    ch: ClickHouseSettings, deliver: Deliver, rollups: Rollups
) -> None:
    records = dataset(500, days=2)
    deliver(records)
    query(ch, "TRUNCATE TABLE DB.rollup_hourly")
    start = records[0].created_at_ms // 1000
    report = rollups.rebuild(start, records[-1].created_at_ms // 1000 + 1)
    assert report.hours > 0
    assert_same(actual(ch, "rollup_hourly"), expected(records, 3600))


def test_percentiles_from_rollups_are_close_to_exact(
    ch: ClickHouseSettings, deliver: Deliver, rollups: Rollups
) -> None:
    records = dataset(1200, days=1)
    deliver(records)
    deliver(records[:500])
    rollups.run_changed()
    (merged,) = query(
        ch,
        "SELECT quantilesTDigestMerge(0.5, 0.9, 0.95, 0.99)(latency_state) "
        "FROM DB.rollup_daily FINAL",
    )[0]
    latencies = sorted(r.latency_ms for r in records)
    for q, got in zip((0.5, 0.9, 0.95, 0.99), merged, strict=True):
        exact = latencies[min(int(q * len(latencies)), len(latencies) - 1)]
        assert got == pytest.approx(exact, rel=0.08), q


def raw_totals(ch: ClickHouseSettings) -> dict[tuple[str, int], tuple[Any, ...]]:
    """The same figures straight from the raw table, deduplicated by ``FINAL``."""
    rows = query(
        ch,
        "SELECT org_id, intDiv(toUInt32(created_at), 3600) * 3600 AS h, count(), "
        "countIf(status_code >= 400 OR error_code != ''), countIf(cache_status = 'hit'), "
        "sum(ifNull(cost_usd, 0)), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens) "
        "FROM DB.requests FINAL GROUP BY org_id, h",
    )
    return {(r[0], r[1]): tuple(float(x) for x in r[2:]) for r in rows}


def test_replaying_the_same_fallback_file_twice_leaves_rollups_equal_to_raw_totals(
    ch: ClickHouseSettings, tmp_path: Path, rollups: Rollups
) -> None:
    """The failure peers have: a crash after the inserts of a replay but before the file is
    deleted means the same file is replayed again. Every record then sits twice in the raw table
    until a merge; the rollups must still count it once."""
    records = dataset(1200, seed=23, days=1)
    spool = tmp_path / "spool"
    spool.mkdir()
    with SpoolWriter(spool, Sink.REQUESTS) as writer:
        writer.append([encode_record(r) for r in records])
    kept = tmp_path / "requests.jsonl.copy"
    shutil.copy(spool / "requests.jsonl", kept)

    query(ch, "SYSTEM STOP MERGES DB.requests")  # keep both copies of every record visible
    delivery = Delivery(ch, tmp_path / "dead")
    try:
        first = Replayer(spool, Sink.REQUESTS, delivery, batch_records=500).replay()
        assert first.status is ReplayStatus.DONE and first.inserted == len(records)
        rollups.run_changed()
        once = actual(ch, "rollup_hourly")
        shutil.copy(kept, spool / "requests.jsonl")  # the file the crashed replayer left behind
        second = Replayer(spool, Sink.REQUESTS, delivery, batch_records=500).replay()
        assert second.status is ReplayStatus.DONE and second.inserted == len(records)
    finally:
        delivery.close()
    rollups.run_changed()

    assert query(ch, "SELECT count() FROM DB.requests")[0][0] == 2 * len(records)
    assert actual(ch, "rollup_hourly") == once
    assert_same(actual(ch, "rollup_hourly"), raw_totals(ch))
    assert_same(actual(ch, "rollup_hourly"), expected(records, 3600))
    assert_same(actual(ch, "rollup_daily"), expected(records, 86400))


def test_a_measure_added_later_is_added_to_existing_rollup_tables(ch: ClickHouseSettings) -> None:
    """Rollup tables made before the firewall counts existed get the columns at the next
    migration; rows already there read 0 until their hours are recomputed."""
    table = "rollup_user_hourly"
    query(ch, f"DROP TABLE DB.{table}")
    old = [m for m in MEASURES if not m.name.startswith("firewall_")]
    with mock.patch("ingester.rollup_sql.MEASURES", tuple(old)):
        query(ch, create_rollup_ddl(ch.database, ROLLUPS["user"], HOUR))
    client = clickhouse_client(ch)
    try:
        client.execute(
            f"INSERT INTO `{ch.database}`.{table} (org_id, bucket, user_id, requests, version) "
            "VALUES",
            [("o", datetime(2026, 1, 1, tzinfo=UTC), "u", 3, 1)],
        )
        ensure_rollup_tables(client, ch.database)
        ensure_rollup_tables(client, ch.database)  # and again: nothing left to add
    finally:
        client.disconnect()
    assert query(ch, f"SELECT requests, firewall_blocked, firewall_flagged FROM DB.{table}") == [
        (3, 0, 0)
    ]
