"""The one counters mechanism: an instance's tally (read by /health) and the Prometheus series
(exported at /metrics) move together."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from gateway.metrics import access_counters
from shared.metrics import flush, observe, observe_many, render


def _exported(event: str) -> float:
    value = REGISTRY.get_sample_value(
        "floopy_gateway_events_total", {"component": "unit_test", "event": event}
    )
    return value or 0.0


def test_counter_set_moves_tally_and_prometheus_series_together() -> None:
    before = _exported("hits")
    first = access_counters("unit_test", "hits", "misses")
    second = access_counters("unit_test", "hits", "misses")
    first.inc("hits", 3)
    second.inc("hits")
    first.inc("misses", 0)
    assert first.snapshot() == {"hits": 3, "misses": 0}
    assert first.snapshot(nonzero=True) == {"hits": 3}  # a breakdown lists what happened
    assert second.get("hits") == 1
    assert _exported("hits") - before == 0  # the series move at the next flush
    flush()
    assert _exported("hits") - before == 4  # the process-wide series adds both instances
    assert b'floopy_gateway_events_total{component="unit_test",event="hits"}' in render()


def test_a_deferred_observation_lands_where_prometheus_client_would_put_it() -> None:
    """``observe`` (and ``observe_many``) reaches into a histogram child (its sum and bucket
    values): this fails if a prometheus-client release moves them."""
    registry = CollectorRegistry()
    buckets = (0.001, 0.01, 0.1, 1.0)
    direct = Histogram("direct_seconds", "d", ("stage",), buckets=buckets, registry=registry)
    deferred = Histogram("deferred_seconds", "d", ("stage",), buckets=buckets, registry=registry)
    amounts = [0.0, 0.001, 0.0010001, 0.05, 0.1, 0.99, 1.0, 7.5, 0.0005]
    for amount in amounts:
        direct.labels("auth").observe(amount)
        observe(deferred.labels("auth"), amount)
        direct.labels("cache").observe(amount)
    # a request's observations at once, two series in one call
    observe_many([(deferred.labels("cache"), a) for a in amounts[:4]])
    observe_many([(deferred.labels("cache"), a) for a in amounts[4:]])
    flush()

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        (family,) = (m for m in registry.collect() if m.name == name)
        return [
            (s.name.removeprefix(name), s.labels, s.value)
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert samples("deferred_seconds") == samples("direct_seconds")
    assert any(
        value == len(amounts)
        for suffix, _, value in samples("deferred_seconds")
        if suffix == "_count"
    )
