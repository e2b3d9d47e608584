"""Pure rollup logic: buckets, ranges, and the SQL text (its exactness is proven against a real
ClickHouse in tests/integration/analytics)."""

from __future__ import annotations

from ingester.rollup_sql import (
    DAY,
    HOUR,
    ROLLUPS,
    changed_hours_sql,
    create_rollup_ddl,
    day_floor,
    days_of,
    hour_floor,
    hour_ranges,
    recompute_daily_sql,
    recompute_hourly_sql,
)
from ingester.rollups import recomputable_hours

T0 = 1_700_000_000 - 1_700_000_000 % DAY  # a UTC midnight


def test_floors_are_utc_and_aligned() -> None:
    assert hour_floor(T0 + 3 * HOUR + 59) == T0 + 3 * HOUR
    assert day_floor(T0 + DAY - 1) == T0
    assert day_floor(T0 + DAY) == T0 + DAY


def test_hour_ranges_merge_contiguous_hours_and_dedupe() -> None:
    hours = [T0 + 5 * HOUR + 10, T0, T0 + HOUR, T0 + HOUR + 1, T0 + 3 * HOUR]
    assert hour_ranges(hours) == [
        (T0, T0 + 2 * HOUR),
        (T0 + 3 * HOUR, T0 + 4 * HOUR),
        (T0 + 5 * HOUR, T0 + 6 * HOUR),
    ]


def test_hour_ranges_are_bounded_in_length() -> None:
    ranges = hour_ranges(range(T0, T0 + 10 * HOUR, HOUR), max_hours=4)
    assert ranges == [
        (T0, T0 + 4 * HOUR),
        (T0 + 4 * HOUR, T0 + 8 * HOUR),
        (T0 + 8 * HOUR, T0 + 10 * HOUR),
    ]


def test_days_of_covers_every_touched_day_once() -> None:
    ranges = [(T0 + 23 * HOUR, T0 + 25 * HOUR), (T0 + 3 * DAY, T0 + 3 * DAY + HOUR)]
    assert days_of(ranges) == [(T0, T0 + 2 * DAY), (T0 + 3 * DAY, T0 + 4 * DAY)]
    assert days_of([]) == []


def test_recomputable_hours_skip_hours_before_the_org_cutoff() -> None:
    changed = [("a", T0 - HOUR), ("a", T0), ("b", T0 - HOUR), ("c", T0 - 2 * DAY)]
    cutoffs = {"a": T0}
    assert recomputable_hours(changed, cutoffs, default_cutoff=T0 - DAY) == {
        "a": [T0],
        "b": [T0 - HOUR],
    }


def test_hourly_sql_reads_raw_rows_deduplicated_and_parameterised() -> None:
    sql = recompute_hourly_sql("db", ROLLUPS["org"])
    assert "FROM `db`.`requests` FINAL" in sql
    assert "%(org_id)s" in sql and "%(start)s" in sql and "%(version)s" in sql
    assert "quantilesTDigestState(0.5, 0.9, 0.95, 0.99)(latency_ms)" in sql


def test_property_rollup_array_joins_the_key_value_pairs() -> None:
    sql = recompute_hourly_sql("db", ROLLUPS["property"])
    assert "FINAL ARRAY JOIN property_keys AS pk, property_values AS pv" in sql
    assert "pk AS `property_key`" in sql


def test_user_rollup_skips_requests_without_a_user() -> None:
    assert "AND (user_id != '')" in recompute_hourly_sql("db", ROLLUPS["user"])


def test_daily_sql_merges_hourly_states_not_percentiles() -> None:
    sql = recompute_daily_sql("db", ROLLUPS["org"])
    assert "FROM `db`.`rollup_hourly` FINAL" in sql
    assert "quantilesTDigestMergeState(0.5, 0.9, 0.95, 0.99)(latency_state)" in sql
    assert "INSERT INTO `db`.`rollup_daily`" in sql


def test_ddl_is_replacing_by_org_bucket_dims_with_version() -> None:
    ddl = create_rollup_ddl("db", ROLLUPS["user"], HOUR)
    assert "`db`.`rollup_user_hourly`" in ddl
    assert "ReplacingMergeTree(version)" in ddl
    assert "ORDER BY (org_id, bucket, user_id)" in ddl
    assert "LowCardinality" not in ddl  # portable core for 18.16


def test_changed_hours_uses_ingestion_time() -> None:
    assert "WHERE ingested_at >= toDateTime(%(since)s)" in changed_hours_sql("db")
