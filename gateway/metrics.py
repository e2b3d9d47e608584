"""The gateway's Prometheus metrics (``GET /metrics``), defined once per worker process.

Request series are labelled by status, model, provider and cache status. The model label is
the model a provider was asked for (``model_used``): a request refused before routing has none
(``-``), so a client sending random model names cannot grow the series without bound.
Everything ``/health`` counts goes through ``shared.metrics.CounterSet`` with these counters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import CounterSet, add, observe_many

if TYPE_CHECKING:
    from gateway.domain import StageTiming
    from shared.records import RequestRecord

__all__ = [
    "BREAKER_STATE",
    "RECORDS_BUFFERED",
    "access_counters",
    "error_counters",
    "observe_request",
    "publisher_counters",
]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_REQUEST_LABELS = ("status", "model", "provider", "cache_status")

REQUESTS = Counter("floopy_requests", "Requests answered by the gateway.", _REQUEST_LABELS)
REQUEST_SECONDS = Histogram(
    "floopy_request_duration_seconds",
    "Time from the request's arrival to the end of its answer (the last chunk of a stream).",
    _REQUEST_LABELS,
    buckets=_LATENCY_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "floopy_stage_duration_seconds",
    "Time spent in each pipeline stage (auth, rate_limit, template, cache, firewall, ...).",
    ("stage",),
    buckets=_LATENCY_BUCKETS,
)

RECORDS_BUFFERED = Gauge(
    "floopy_records_buffered",
    "Records waiting in the workers' publish buffers for Redis.",
    multiprocess_mode="livesum",
)
BREAKER_STATE = Gauge(
    "floopy_breaker_state",
    "Circuit breaker of each provider as last read from Redis: 0 closed, 1 half-open, 2 open.",
    ("provider",),
    multiprocess_mode="mostrecent",
)
BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}

_PUBLISHER = {
    "published": Counter("floopy_records_published", "Records the publisher put in Redis."),
    "deduplicated": Counter(
        "floopy_records_deduplicated",
        "Records a publish fence kept out of a stream that already held them (a retry of a call"
        " whose answer was lost).",
    ),
    "dropped": Counter(
        "floopy_records_dropped", "Records dropped: publish buffer full, or left at shutdown."
    ),
    "failures": Counter("floopy_publish_failures", "Failed publish round trips (retried)."),
    "spooled": Counter("floopy_records_spooled", "Records written to the gateway's outage spool."),
    "unspooled": Counter(
        "floopy_records_unspooled", "Spooled records (and usage lines) drained back into Redis."
    ),
    "spool_failures": Counter(
        "floopy_outage_spool_failures", "Writes to the gateway's outage spool that failed."
    ),
}
_EVENTS = Counter(
    "floopy_gateway_events",
    "What /health counts: key cache, limiter fail-open, usage writes, seeding, errors.",
    ("component", "event"),
)


def publisher_counters() -> CounterSet:
    return CounterSet(_PUBLISHER)


def access_counters(component: str, *events: str, **renamed: str) -> CounterSet:
    """Counters of one access component (``key_cache``, ``rate_limiter``, ``usage``, ...).
    ``renamed``: a counter whose name its user fixes (a ``Drain`` counts ``dropped``) exported
    as the component's own event (the response cache's ``writes_dropped``)."""
    names = {event: event for event in events} | renamed
    return CounterSet({name: _EVENTS.labels(component, event) for name, event in names.items()})


def error_counters() -> CounterSet:
    return access_counters(
        "errors",
        "unexpected",
        "record_build",
        "firewall_classifier",
        "firewall_verdict_cache",
        "refused_in_flight",
        "records_after_failed_response",
    )


_CHILDREN_MAX = 10_000
_request_children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
_stage_children: dict[str, Any] = {}


def observe_request(record: RequestRecord, timings: list[StageTiming]) -> None:
    """Once per request: each series' child is looked up once per process (``labels`` takes
    a lock and builds its key on every call), up to ``_CHILDREN_MAX`` of them; the increments
    wait for the worker's next flush (``shared.metrics``)."""
    labels = (
        str(record.status_code),
        record.model_used or "-",
        record.provider or "-",
        record.cache_status or "-",
    )
    children = _request_children.get(labels)
    if children is None:
        children = REQUESTS.labels(*labels), REQUEST_SECONDS.labels(*labels)
        if len(_request_children) < _CHILDREN_MAX:
            _request_children[labels] = children
    add(children[0])
    observations = [(children[1], record.latency_ms / 1000)]
    for timing in timings:
        stage = _stage_children.get(timing.name)
        if stage is None:
            stage = STAGE_SECONDS.labels(timing.name)
            if len(_stage_children) < _CHILDREN_MAX:
                _stage_children[timing.name] = stage
        observations.append((stage, timing.duration_ms / 1000))
    observe_many(observations)
