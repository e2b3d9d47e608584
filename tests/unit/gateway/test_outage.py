from __future__ import annotations

from gateway.policy.outage import Outage


def test_spooling_starts_after_the_grace_and_stops_at_the_first_success() -> None:
    outage = Outage(grace_s=1.0)
    assert not outage.down and not outage.spooling(100.0)
    outage.failed(100.0)
    outage.failed(100.8)  # a later failure does not restart the clock
    assert outage.down and not outage.spooling(100.9)
    assert outage.spooling(101.0)
    outage.recovered()
    assert not outage.down and not outage.spooling(200.0)
    outage.failed(300.0)
    assert not outage.spooling(300.5), "a new outage gets its own grace"


def test_zero_grace_spools_at_the_first_failure() -> None:
    outage = Outage(grace_s=0.0)
    outage.failed(5.0)
    assert outage.spooling(5.0)
