"""The circuit breakers as dispatch sees them: the Redis-shared ``BreakerStore`` plus a short
in-process memory of "closed", and every state change sent to the breaker-events sink.

Invariants:
- A closed breaker is remembered for ``CLOSED_MEMORY_S`` per worker, so the common case costs
  no Redis call at all; any failure seen by this worker forgets it at once. Another worker's
  opening is therefore seen within ``CLOSED_MEMORY_S`` (far below any useful cool-down).
- A success is reported to Redis only for a half-open probe: in closed and open a success
  changes nothing (``gateway.policy.breaker.on_success``).
- Each ``BreakerEventRecord`` the store returns is submitted to the publisher exactly once.
- Redis trouble never fails a request, nor holds it up for long: the store admits and logs on
  errors (fail open), and each call here gives Redis ``ADMIT_BUDGET_S`` (admission, on every
  request path) or ``RECORD_BUDGET_S`` (failures, probe results) before failing open the same
  way, logged and counted in ``budget_overruns``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from gateway.clients.breaker_store import BreakerStore, ProviderHealth
from gateway.policy.breaker import Admission, BreakerState
from shared.records import BreakerEventRecord

_T = TypeVar("_T")

__all__ = ["ADMIT_BUDGET_S", "CLOSED_MEMORY_S", "RECORD_BUDGET_S", "Breakers"]

log = logging.getLogger(__name__)

CLOSED_MEMORY_S = 1.0
ADMIT_BUDGET_S = 0.25
RECORD_BUDGET_S = 1.0


class Breakers:
    def __init__(
        self,
        store: BreakerStore,
        emit: Callable[[BreakerEventRecord], object],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._emit = emit
        self._clock = clock
        self._closed_until: dict[str, float] = {}
        self.budget_overruns = 0

    @property
    def redis_errors(self) -> int:
        return self._store.redis_errors

    async def admit(self, provider: str) -> Admission:
        now = self._clock()
        if self._closed_until.get(provider, 0.0) > now:
            return Admission.ALLOW
        admission, event = await self._within(
            ADMIT_BUDGET_S, self._store.admit(provider), (Admission.ALLOW, None), provider
        )
        self._publish(event)
        if admission is Admission.ALLOW:
            self._closed_until[provider] = now + CLOSED_MEMORY_S
        return admission

    async def failure(self, provider: str) -> bool:
        """Count a failure; True when it opened the breaker."""
        self._closed_until.pop(provider, None)
        event = await self._within(
            RECORD_BUDGET_S, self._store.record_failure(provider), None, provider
        )
        self._publish(event)
        return event is not None and event.to_state == BreakerState.OPEN.value

    async def probe_succeeded(self, provider: str) -> None:
        self._publish(
            await self._within(
                RECORD_BUDGET_S, self._store.record_success(provider), None, provider
            )
        )

    async def snapshot(self, providers: Sequence[str]) -> list[ProviderHealth]:
        return await self._store.snapshot(providers)

    async def _within(
        self, budget_s: float, call: Awaitable[_T], fail_open: _T, provider: str
    ) -> _T:
        try:
            async with asyncio.timeout(budget_s):
                return await call
        except TimeoutError:
            self.budget_overruns += 1
            log.warning(
                "circuit breaker of %s: redis gave no answer within %gs; failing open",
                provider,
                budget_s,
            )
            return fail_open

    def _publish(self, event: BreakerEventRecord | None) -> None:
        if event is not None:
            self._emit(event)
