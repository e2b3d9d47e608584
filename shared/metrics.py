"""The one counters mechanism of both processes: every figure ``/health`` (or a shutdown log
line) shows and every Prometheus series ``GET /metrics`` exposes is moved by the same
``CounterSet.inc`` call.

Invariants:
- A ``CounterSet`` belongs to one component instance (a publisher, a key store, a consumer's
  sink): it keeps that instance's own tally (what ``/health`` and tests read) and adds the same
  amount to the process-wide Prometheus counter of each name (what ``/metrics`` exports).
- Prometheus metrics are defined once per process, at module level in ``gateway.metrics`` and
  ``ingester.metrics`` (prometheus-client's registry refuses a second definition).
- Multiprocess mode (granian workers): ``floopy-gateway`` points ``PROMETHEUS_MULTIPROC_DIR`` at
  an emptied directory before any worker imports prometheus-client, so each worker writes its
  series to files there and ``render`` adds them up. Without it (tests, one process) the
  default registry is read.
- Series move in batches: an increment or observation made through this module is added up in
  memory and reaches prometheus-client at the next ``flush`` (``render`` flushes first; a gateway
  worker flushes every ``FLUSH_EVERY_S`` and at shutdown). In multiprocess mode each
  prometheus-client increment is a lock and an mmap write (≈3 µs, about 25 per request); a
  flush writes each moved series once. A scrape may miss another worker's last second.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import threading
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter as PromCounter
    from prometheus_client import Histogram as PromHistogram

__all__ = [
    "CONTENT_TYPE_LATEST",
    "FLUSH_EVERY_S",
    "MULTIPROC_ENV",
    "CounterSet",
    "add",
    "counted",
    "flush",
    "flush_every",
    "observe",
    "observe_many",
    "prepare_multiprocess",
    "render",
]

FLUSH_EVERY_S = 1.0

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's own switch, read by it when first imported: this module imports it
lazily so ``prepare_multiprocess`` can run first in the process that starts the workers."""
CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"

_lock = threading.Lock()  # increments come from the loop and from worker threads (delivery)
_pending: dict[Any, float] = {}
"""prometheus-client value → amount to add: a counter's child, or a histogram child's sum and
bucket values (each has ``inc``)."""


def add(counter: PromCounter, amount: float = 1) -> None:
    """``counter.inc(amount)`` (a counter, or a labelled child), deferred to the next ``flush``."""
    with _lock:
        _pending[counter] = _pending.get(counter, 0.0) + amount


def observe(child: PromHistogram, amount: float) -> None:
    """``child.observe(amount)``, deferred to the next ``flush``: the same sum and bucket (the
    first upper bound at or above the amount, as prometheus-client's ``observe`` picks it)."""
    observe_many(((child, amount),))


def observe_many(observations: Iterable[tuple[PromHistogram, float]]) -> None:
    """``observe`` for each pair, under one lock (a request's latency and its stages' at once)."""
    bisect_left = bisect.bisect_left
    with _lock:
        pending = _pending  # read under the lock: ``flush`` swaps it
        for child, amount in observations:
            total = child._sum
            pending[total] = pending.get(total, 0.0) + amount
            bucket = child._buckets[bisect_left(child._upper_bounds, amount)]
            pending[bucket] = pending.get(bucket, 0.0) + 1


def flush() -> None:
    """Hand every deferred increment to prometheus-client."""
    global _pending
    with _lock:
        moved, _pending = _pending, {}
    for value, amount in moved.items():
        value.inc(amount)


async def flush_every(
    seconds: float = FLUSH_EVERY_S, stopping: asyncio.Event | None = None
) -> None:
    """A process's flusher task: runs until cancelled or ``stopping`` is set, then flushes once
    more."""
    stopping = stopping or asyncio.Event()
    try:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), seconds)
            flush()
    finally:
        flush()


class CounterSet:
    """Named counters of one component instance, each mirrored to a Prometheus counter (a
    metric, or a metric's child with its labels already bound)."""

    def __init__(self, metrics: Mapping[str, PromCounter | None]) -> None:
        self._metrics = dict(metrics)
        self._tally: Tally[str] = Tally()

    @classmethod
    def local(cls, *names: str) -> CounterSet:
        """A tally mirrored to no Prometheus series: for a pure object built without its
        process's metrics (unit tests, a policy used on its own)."""
        return cls(dict.fromkeys(names))

    def inc(self, name: str, n: float = 1) -> None:
        if n:
            metric = self._metrics[name]  # a name never declared is a bug: KeyError
            self._tally[name] += int(n)
            if metric is not None:
                add(metric, n)

    def get(self, name: str) -> int:
        return self._tally[name]

    def snapshot(self, *, nonzero: bool = False) -> dict[str, int]:
        """Every name's tally; ``nonzero``: only the names that moved (a per-kind breakdown
        in ``/health`` lists what happened, not every kind that could)."""
        return {
            name: self._tally[name] for name in self._metrics if not nonzero or self._tally[name]
        }


class counted:
    """A read-only attribute that is the owner's ``self.counters.get(name)``: a component keeps
    the attribute names its readers (``/health``, tests) always used."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __get__(self, instance: Any, owner: type | None = None) -> int:
        if instance is None:
            raise AttributeError(self._name)
        counters: CounterSet = instance.counters
        return counters.get(self._name)


def prepare_multiprocess(directory: Path) -> None:
    """Before workers start: an empty directory for their metric files, named in the
    environment the workers inherit (files of a previous run would be added up otherwise)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)


def render() -> bytes:
    """The Prometheus text exposition of this process, or of every worker in multiprocess
    mode."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    flush()
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # untyped
    return generate_latest(registry)
