"""Rollup tables and the SQL that (re)computes them, as pure functions: no I/O.

Why recompute instead of a materialized view: delivery is at least once, so the raw tables hold
a record twice until a merge; a materialized view over them counts a re-inserted batch twice
and never forgets it. Instead a rollup row is a pure function of the raw rows of its hour,
read with ``FINAL`` (one row per record identity). Recomputing an hour writes the same figures
again, so replaying a file twice or redelivering a batch changes nothing.

Exactness contract:
- Every rollup table is a ``ReplacingMergeTree(version)`` keyed by (org, bucket, dims); a
  recompute inserts a whole hour (or day) with a newer ``version`` and readers use ``FINAL``,
  so the newest recompute wins and a retried insert of the same version collapses. Records are
  only ever added to an hour (raw rows are deduplicated, never changed), so the set of dims of
  an hour only grows and no stale dim row survives a recompute.
- Hourly rows come from the raw table; daily rows from the hourly rows of the day (sums, and
  t-digest quantile *states* merged, so daily percentiles are those of every request of the
  day, not an average of hourly percentiles).
- Buckets are UTC: ``intDiv(unix_seconds, 3600) * 3600``, independent of the server timezone.
- Every value a caller supplies is a ``%(name)s`` parameter; identifiers come from this module.
- On a cluster (``cluster`` given) a recompute reads and writes the shard's own tables
  (``ingester.schema.cluster.stored_table``) and runs on every shard: each shard's rollup row is
  a partial sum of its bucket, which readers of the ``Distributed`` tables aggregate anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ingester.schema.cluster import stored_table
from shared.tables import DAY, HOUR, REQUESTS, ROLLUP_STATE, rollup_table

__all__ = [
    "DAY",
    "HOUR",
    "MEASURES",
    "QUANTILES",
    "ROLLUPS",
    "RollupSpec",
    "add_measure_ddl",
    "changed_hours_sql",
    "create_rollup_ddl",
    "create_state_ddl",
    "day_floor",
    "days_of",
    "hour_floor",
    "hour_ranges",
    "read_watermark_sql",
    "recompute_daily_sql",
    "recompute_hourly_sql",
    "write_watermark_sql",
]

QUANTILES = (0.5, 0.9, 0.95, 0.99)
_Q = ", ".join(str(q) for q in QUANTILES)


@dataclass(frozen=True)
class Measure:
    """One figure of a rollup row: how it is computed from raw rows and how rows combine."""

    name: str
    type: str
    from_raw: str
    combine: str


MEASURES: tuple[Measure, ...] = (
    Measure("requests", "UInt64", "count()", "sum(requests)"),
    Measure("errors", "UInt64", "countIf(status_code >= 400 OR error_code != '')", "sum(errors)"),
    Measure("cache_hits", "UInt64", "countIf(cache_status = 'hit')", "sum(cache_hits)"),
    Measure(
        "firewall_blocked", "UInt64", "countIf(firewall_verdict = 'block')", "sum(firewall_blocked)"
    ),
    Measure(
        "firewall_flagged", "UInt64", "countIf(firewall_verdict = 'flag')", "sum(firewall_flagged)"
    ),
    Measure("cost_usd", "Float64", "sum(ifNull(cost_usd, 0))", "sum(cost_usd)"),
    Measure("cost_saved_usd", "Float64", "sum(ifNull(cost_saved_usd, 0))", "sum(cost_saved_usd)"),
    Measure("prompt_tokens", "UInt64", "sum(toUInt64(prompt_tokens))", "sum(prompt_tokens)"),
    Measure(
        "completion_tokens",
        "UInt64",
        "sum(toUInt64(completion_tokens))",
        "sum(completion_tokens)",
    ),
    Measure("total_tokens", "UInt64", "sum(toUInt64(total_tokens))", "sum(total_tokens)"),
    Measure("latency_sum_ms", "Float64", "sum(latency_ms)", "sum(latency_sum_ms)"),
    Measure(
        "latency_state",
        f"AggregateFunction(quantilesTDigest({_Q}), Float64)",
        f"quantilesTDigestState({_Q})(latency_ms)",
        f"quantilesTDigestMergeState({_Q})(latency_state)",
    ),
    Measure("last_seen", "DateTime", "max(created_at)", "max(last_seen)"),
)


@dataclass(frozen=True)
class Dim:
    name: str
    type: str
    from_raw: str


@dataclass(frozen=True)
class RollupSpec:
    """A family of two tables (hourly, daily) sliced by ``dims``."""

    name: str
    dims: tuple[Dim, ...]
    array_join: str = ""
    raw_filter: str = ""

    def table(self, granularity: int) -> str:
        return rollup_table(self.name, granularity)


_MODEL = "if(model_used != '', model_used, model_requested)"

ROLLUPS: dict[str, RollupSpec] = {
    "org": RollupSpec(
        name="",
        dims=(
            Dim("model", "String", _MODEL),
            Dim("provider", "String", "provider"),
            Dim("status_code", "UInt16", "status_code"),
        ),
    ),
    "user": RollupSpec(
        name="user", dims=(Dim("user_id", "String", "user_id"),), raw_filter="user_id != ''"
    ),
    "property": RollupSpec(
        name="property",
        dims=(
            Dim("property_key", "String", "pk"),
            Dim("property_value", "String", "pv"),
        ),
        array_join="ARRAY JOIN property_keys AS pk, property_values AS pv",
    ),
}


def _q(name: str) -> str:
    return f"`{name}`"


def hour_floor(ts: int) -> int:
    return ts - ts % HOUR


def day_floor(ts: int) -> int:
    return ts - ts % DAY


def create_rollup_ddl(database: str, spec: RollupSpec, granularity: int) -> str:
    """Runs unchanged on 18.16 and on a current server (no LowCardinality needed: small)."""
    columns = [
        "`org_id` String",
        "`bucket` DateTime",
        *(f"{_q(d.name)} {d.type}" for d in spec.dims),
        *(f"{_q(m.name)} {m.type}" for m in MEASURES),
        "`version` UInt64",
    ]
    key = ", ".join(["org_id", "bucket", *(d.name for d in spec.dims)])
    body = ",\n    ".join(columns)
    return (
        f"CREATE TABLE IF NOT EXISTS {_q(database)}.{_q(spec.table(granularity))} (\n"
        f"    {body}\n)\nENGINE = ReplacingMergeTree(version)\n"
        f"PARTITION BY toYYYYMM(bucket)\nORDER BY ({key})"
    )


def add_measure_ddl(database: str, table: str, measure: Measure) -> str:
    """A measure added after its table was created: rows already there read it as 0 until
    their hours are recomputed (``floopy-ingester rollups rebuild``)."""
    return (
        f"ALTER TABLE {_q(database)}.{_q(table)} "
        f"ADD COLUMN {_q(measure.name)} {measure.type} AFTER {_q(_previous(measure))}"
    )


def _previous(measure: Measure) -> str:
    at = MEASURES.index(measure)
    return MEASURES[at - 1].name if at else "bucket"


def create_state_ddl(database: str) -> str:
    """One row per job name: the ``ingested_at`` up to which changes have been rolled up."""
    return (
        f"CREATE TABLE IF NOT EXISTS {_q(database)}.{_q(ROLLUP_STATE)} (\n"
        "    `name` String,\n    `watermark` DateTime,\n    `version` UInt64\n)\n"
        "ENGINE = ReplacingMergeTree(version)\nORDER BY name"
    )


def _insert_head(database: str, spec: RollupSpec, granularity: int, cluster: str) -> str:
    names = ["org_id", "bucket", *(d.name for d in spec.dims), *(m.name for m in MEASURES)]
    cols = ", ".join(_q(n) for n in [*names, "version"])
    table = stored_table(spec.table(granularity), cluster)
    return f"INSERT INTO {_q(database)}.{_q(table)} ({cols})"


def recompute_hourly_sql(
    database: str, spec: RollupSpec, raw_table: str = REQUESTS, *, cluster: str = ""
) -> str:
    """Replace the hourly rows of one org over ``[start, end)`` (unix seconds, hour-aligned).
    Params: org_id, start, end, version."""
    dims = ", ".join(f"{d.from_raw} AS {_q(d.name)}" for d in spec.dims)
    measures = ", ".join(f"{m.from_raw} AS {_q(m.name)}" for m in MEASURES)
    group = ", ".join(["org_id", "bucket", *(_q(d.name) for d in spec.dims)])
    extra = f" AND ({spec.raw_filter})" if spec.raw_filter else ""
    return (
        f"{_insert_head(database, spec, HOUR, cluster)}\n"
        f"SELECT org_id, toDateTime(intDiv(toUInt32(created_at), {HOUR}) * {HOUR}) AS bucket, "
        f"{dims}, {measures}, toUInt64(%(version)s) AS version\n"
        f"FROM {_q(database)}.{_q(stored_table(raw_table, cluster))} FINAL {spec.array_join}\n"
        "WHERE org_id = %(org_id)s AND created_at >= toDateTime(%(start)s) "
        f"AND created_at < toDateTime(%(end)s){extra}\n"
        f"GROUP BY {group}"
    )


def recompute_daily_sql(database: str, spec: RollupSpec, *, cluster: str = "") -> str:
    """Replace the daily rows of one org over ``[start, end)`` (day-aligned) from its hourly
    rows. Params: org_id, start, end, version."""
    dims = ", ".join(_q(d.name) for d in spec.dims)
    measures = ", ".join(f"{m.combine} AS {_q(m.name)}" for m in MEASURES)
    return (
        f"{_insert_head(database, spec, DAY, cluster)}\n"
        f"SELECT org_id, toDateTime(intDiv(toUInt32(bucket), {DAY}) * {DAY}) AS day, "
        f"{dims}, {measures}, toUInt64(%(version)s) AS version\n"
        f"FROM {_q(database)}.{_q(stored_table(spec.table(HOUR), cluster))} FINAL\n"
        "WHERE org_id = %(org_id)s AND bucket >= toDateTime(%(start)s) "
        "AND bucket < toDateTime(%(end)s)\n"
        f"GROUP BY org_id, day, {dims}"
    )


def changed_hours_sql(database: str, raw_table: str = REQUESTS, *, cluster: str = "") -> str:
    """(org_id, hour) of every raw row ingested at or after ``since``. Params: since."""
    return (
        f"SELECT DISTINCT org_id, intDiv(toUInt32(created_at), {HOUR}) * {HOUR} AS hour\n"
        f"FROM {_q(database)}.{_q(stored_table(raw_table, cluster))}\n"
        "WHERE ingested_at >= toDateTime(%(since)s)"
    )


def read_watermark_sql(database: str) -> str:
    return (
        f"SELECT toUInt32(watermark) FROM {_q(database)}.{_q(ROLLUP_STATE)} FINAL "
        "WHERE name = %(name)s"
    )


def write_watermark_sql(database: str) -> str:
    return f"INSERT INTO {_q(database)}.{_q(ROLLUP_STATE)} (name, watermark, version) VALUES"


def hour_ranges(hours: Iterable[int], max_hours: int = 24 * 7) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` ranges covering ``hours`` (unix seconds), each at most
    ``max_hours`` long so one INSERT … SELECT stays bounded in memory."""
    ranges: list[tuple[int, int]] = []
    for hour in sorted({hour_floor(h) for h in hours}):
        if ranges and ranges[-1][1] == hour and hour - ranges[-1][0] < max_hours * HOUR:
            ranges[-1] = (ranges[-1][0], hour + HOUR)
        else:
            ranges.append((hour, hour + HOUR))
    return ranges


def days_of(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The whole days touched by hour ranges, as day-aligned ranges (merged, sorted)."""
    days: set[int] = set()
    for start, end in ranges:
        day = day_floor(start)
        while day < end:
            days.add(day)
            day += DAY
    merged: list[tuple[int, int]] = []
    for day in sorted(days):
        if merged and merged[-1][1] == day:
            merged[-1] = (merged[-1][0], day + DAY)
        else:
            merged.append((day, day + DAY))
    return merged
