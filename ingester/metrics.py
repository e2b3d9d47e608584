"""In-process counters of the ingester, one set per sink.

Counters only grow; they are read by the worker's shutdown log line and by tests, and are the
place an exporter would read from. Updated from the event loop only (no lock needed).
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum

from shared.streams import Sink

__all__ = ["ConsumerCounter", "Counters"]


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


class Counters:
    def __init__(self) -> None:
        self._values: Counter[tuple[Sink, ConsumerCounter]] = Counter()

    def inc(self, sink: Sink, name: ConsumerCounter, n: int = 1) -> None:
        self._values[(sink, name)] += n

    def get(self, sink: Sink, name: ConsumerCounter) -> int:
        return self._values[(sink, name)]

    def snapshot(self, sink: Sink) -> dict[str, int]:
        return {name.value: self._values[(sink, name)] for name in ConsumerCounter}
