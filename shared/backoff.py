"""The one retry schedule of both processes: wait ``first_s`` after the first failure in a row,
double after each further one, never more than ``max_s``; a success starts over.

Every loop that retries something (the gateway's drain to Redis, its spool drain, dispatch's
attempts at a provider, the ingester's arq poll and ClickHouse inserts, the devstack
supervisor's restarts) takes its waits from a ``Backoff`` instead of writing the formula again.
The schedule is tenacity's ``wait_exponential``, so a tenacity ``Retrying`` (``wait``) and a
hand-run loop that only needs its next sleep (``delay_s``) wait exactly the same. No jitter:
each caller is one task per process, not a crowd contending for one resource.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from tenacity import BaseRetrying, RetryCallState, wait_exponential

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    first_s: float
    max_s: float

    def wait(self, *, after: int = 0) -> wait_exponential:
        """The schedule as a tenacity wait strategy. ``after``: failures the caller already
        waited for outside tenacity (dispatch runs its first attempt bare), so the schedule
        resumes where it stood instead of starting over."""
        return wait_exponential(multiplier=self.first_s * 2**after, max=self.max_s)

    def delay_s(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1 for the first)."""
        # tenacity reads only ``attempt_number`` (the attempt that just failed) from the state
        state = RetryCallState(cast(BaseRetrying, None), None, (), {})
        state.attempt_number = max(1, failures)
        return self.wait()(state)
