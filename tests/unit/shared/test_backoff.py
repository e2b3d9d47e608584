"""The one retry schedule: doubling from ``first_s``, capped at ``max_s``, and the same waits
whether a loop asks for its next delay or tenacity runs the retries."""

from __future__ import annotations

import pytest
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from shared.backoff import Backoff


def test_delays_double_from_the_first_and_stop_at_the_cap() -> None:
    backoff = Backoff(first_s=0.05, max_s=2.0)
    assert [backoff.delay_s(n) for n in range(1, 10)] == [
        0.05,
        0.1,
        0.2,
        0.4,
        0.8,
        1.6,
        2.0,
        2.0,
        2.0,
    ]


def test_a_long_run_of_failures_stays_at_the_cap() -> None:
    assert Backoff(first_s=1.0, max_s=30.0).delay_s(10_000) == 30.0


def test_no_failure_yet_waits_like_the_first() -> None:
    backoff = Backoff(first_s=0.5, max_s=4.0)
    assert backoff.delay_s(0) == backoff.delay_s(1) == 0.5


def test_a_zero_schedule_never_waits() -> None:
    assert [Backoff(first_s=0.0, max_s=0.0).delay_s(n) for n in range(1, 5)] == [0.0] * 4


class _Flaky(Exception):
    pass


def _tenacity_waits(backoff: Backoff, attempts: int, *, after: int = 0) -> list[float]:
    waits: list[float] = []
    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=backoff.wait(after=after),
        retry=retry_if_exception_type(_Flaky),
        sleep=waits.append,
        reraise=True,
    )
    with pytest.raises(_Flaky):
        for attempt in retrying:
            with attempt:
                raise _Flaky
    return waits


def test_tenacity_waits_the_same_schedule() -> None:
    backoff = Backoff(first_s=0.2, max_s=1.0)
    assert _tenacity_waits(backoff, 6) == [backoff.delay_s(n) for n in range(1, 6)]


def test_tenacity_resumes_after_failures_waited_for_outside_it() -> None:
    backoff = Backoff(first_s=0.05, max_s=0.5)
    assert _tenacity_waits(backoff, 5, after=1) == [backoff.delay_s(n) for n in range(2, 6)]
