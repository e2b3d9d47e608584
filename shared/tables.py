"""ClickHouse table names, in one place: the ingester's DDL, inserts, rollups and retention
create and write these tables, the gateway's console reads them. A table renamed here is
renamed for every reader and writer at once.

Raw tables are named after their sink (one table per record kind). Rollups are families of two
tables, hourly and daily: ``rollup_hourly``/``rollup_daily`` for the org family (named ""),
``rollup_<family>_hourly``/``_daily`` for the others. On a cluster each name is the
``Distributed`` table; the per-shard table is ``<name>_local``
(``ingester.schema.cluster.stored_table``), which readers never name.
"""

from __future__ import annotations

from shared.streams import Sink

__all__ = [
    "BREAKER_EVENTS",
    "DAY",
    "HOUR",
    "ORG_SETTINGS",
    "RAW_TABLES",
    "REQUESTS",
    "ROLLUP_STATE",
    "SPANS",
    "rollup_table",
]

HOUR = 3600
DAY = 86400

RAW_TABLES: dict[Sink, str] = {sink: sink.value for sink in Sink}
"""Each sink's raw table."""
REQUESTS = RAW_TABLES[Sink.REQUESTS]
SPANS = RAW_TABLES[Sink.SPANS]
BREAKER_EVENTS = RAW_TABLES[Sink.BREAKER_EVENTS]

ROLLUP_STATE = "rollup_state"
"""The rollup jobs' watermark (per shard, never distributed)."""
ORG_SETTINGS = "org_settings"
"""Each org's raw-log retention, mirrored from the gateway's key store (per shard)."""


def rollup_table(family: str, granularity_s: int) -> str:
    """The table of rollup ``family`` ("" for the org family, "user", "property") holding
    buckets of ``granularity_s``: daily for whole days, hourly otherwise."""
    suffix = "daily" if granularity_s % DAY == 0 else "hourly"
    return f"rollup_{family}_{suffix}" if family else f"rollup_{suffix}"
