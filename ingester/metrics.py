"""The ingester's counters and Prometheus metrics, one set per sink.

Counters only grow. ``Counters`` is the one place they are kept: the worker's shutdown log line
and tests read an instance's own tally, ``GET /metrics`` (``IngesterSettings.metrics_port``)
exports the process-wide Prometheus series the same ``inc`` moved (``shared.metrics``). Updated
from the event loop only. Stream and spool gauges are set by ``ingester.observe`` every few
seconds, not at scrape time, so a scrape never waits on Redis.
"""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import CounterSet
from shared.streams import Sink

__all__ = [
    "INSERT_SECONDS",
    "SPOOL_BYTES",
    "SPOOL_DROPPED_BYTES",
    "SPOOL_DROPPED_RECORDS",
    "STREAM_LAG",
    "STREAM_LENGTH",
    "STREAM_PENDING",
    "ConsumerCounter",
    "Counters",
    "delivery_counters",
    "ingester_events",
]


class ConsumerCounter(StrEnum):
    READ = "read"
    ACKED = "acked"
    INSERTED = "inserted"
    SPOOLED = "spooled"
    SPOOL_FAILURES = "spool_failures"
    CLAIMED = "claimed"
    DEAD_LETTERED = "dead_lettered"
    TRIMS = "trims"
    TRIMMED = "trimmed"
    FORGOTTEN_CONSUMERS = "forgotten_consumers"
    ERRORS = "errors"
    REPLAYS = "replays"
    REPLAYED = "replayed"


_EVENTS = Counter(
    "floopy_ingester_records",
    "What the ingester did, per sink: records read, acked, inserted, spooled, replayed, "
    "claimed, dead-lettered, trimmed; trims, replays, errors.",
    ("sink", "event"),
)
INSERT_SECONDS = Histogram(
    "floopy_clickhouse_insert_duration_seconds",
    "One batch's ClickHouse insert, retries included.",
    ("sink",),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
_SHARD = ("sink", "shard")
STREAM_LENGTH = Gauge("floopy_stream_length", "Entries in each stream shard.", _SHARD)
STREAM_LAG = Gauge(
    "floopy_stream_lag", "Entries of each stream shard not yet delivered to the group.", _SHARD
)
STREAM_PENDING = Gauge(
    "floopy_stream_pending", "Entries of each stream shard delivered but not acked.", _SHARD
)
SPOOL_BYTES = Gauge("floopy_spool_bytes", "Bytes in the sink's fallback spool files.", ("sink",))
SPOOL_DROPPED_RECORDS = Gauge(
    "floopy_spool_dropped_records", "Records lost to spool rotation, ever.", ("sink",)
)
SPOOL_DROPPED_BYTES = Gauge(
    "floopy_spool_dropped_bytes", "Bytes lost to spool rotation, ever.", ("sink",)
)


_INGESTER_EVENTS = Counter(
    "floopy_ingester_events",
    "What the ingester's parts did besides moving records: ClickHouse insert retries, batches "
    "found unavailable, poison bisections, replay inserts split into batches (delivery); "
    "replay-lock heartbeats that failed (lock); arq polls of Redis that failed (worker).",
    ("component", "event"),
)


def ingester_events(component: str, *events: str) -> CounterSet:
    """Counters of one part of the ingester (``delivery``, ``lock``, ``worker``)."""
    return CounterSet({event: _INGESTER_EVENTS.labels(component, event) for event in events})


def delivery_counters() -> CounterSet:
    return ingester_events(
        "delivery",
        "inserted",
        "dead_lettered",
        "retries",
        "unavailable",
        "bisections",
        "split_inserts",
    )


def _sink_counters(sink: Sink) -> CounterSet:
    return CounterSet({c.value: _EVENTS.labels(sink.value, c.value) for c in ConsumerCounter})


class Counters:
    def __init__(self) -> None:
        self._sets = {sink: _sink_counters(sink) for sink in Sink}

    def inc(self, sink: Sink, name: ConsumerCounter, n: int = 1) -> None:
        self._sets[sink].inc(name.value, n)

    def get(self, sink: Sink, name: ConsumerCounter) -> int:
        return self._sets[sink].get(name.value)

    def snapshot(self, sink: Sink) -> dict[str, int]:
        return self._sets[sink].snapshot()
