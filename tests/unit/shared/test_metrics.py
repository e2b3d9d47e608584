"""The one counters mechanism: an instance's tally (read by /health) and the Prometheus series
(exported at /metrics) move together."""

from __future__ import annotations

from prometheus_client import REGISTRY

from gateway.metrics import access_counters
from shared.metrics import render


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
    assert _exported("hits") - before == 4  # the process-wide series adds both instances
    assert b'floopy_gateway_events_total{component="unit_test",event="hits"}' in render()
