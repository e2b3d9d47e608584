"""The circuit breakers as dispatch sees them: the Redis-shared ``BreakerStore`` plus a short
in-process memory of "closed", and every state change sent to the breaker-events sink.

Invariants:
- A closed breaker is remembered for ``CLOSED_MEMORY_S`` per worker, so the common case costs
  no Redis call at all; any failure seen by this worker forgets it at once. Another worker's
  opening is therefore seen within ``CLOSED_MEMORY_S`` (far below any useful cool-down).
- A success is reported to Redis only for a half-open probe: in closed and open a success
  changes nothing (``gateway.policy.breaker.on_success``).
- Each ``BreakerEventRecord`` the store returns is submitted to the publisher exactly once.
- Redis trouble never fails a request: the store admits and logs (fail open).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateway.clients.breaker_store import BreakerStore, ProviderHealth
from gateway.policy.breaker import Admission, BreakerState
from shared.records import BreakerEventRecord

__all__ = ["CLOSED_MEMORY_S", "Breakers"]

CLOSED_MEMORY_S = 1.0


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

    @property
    def redis_errors(self) -> int:
        return self._store.redis_errors

    async def admit(self, provider: str) -> Admission:
        now = self._clock()
        if self._closed_until.get(provider, 0.0) > now:
            return Admission.ALLOW
        admission, event = await self._store.admit(provider)
        self._publish(event)
        if admission is Admission.ALLOW:
            self._closed_until[provider] = now + CLOSED_MEMORY_S
        return admission

    async def failure(self, provider: str) -> bool:
        """Count a failure; True when it opened the breaker."""
        self._closed_until.pop(provider, None)
        event = await self._store.record_failure(provider)
        self._publish(event)
        return event is not None and event.to_state == BreakerState.OPEN.value

    async def probe_succeeded(self, provider: str) -> None:
        self._publish(await self._store.record_success(provider))

    async def snapshot(self, providers: Sequence[str]) -> list[ProviderHealth]:
        return await self._store.snapshot(providers)

    def _publish(self, event: BreakerEventRecord | None) -> None:
        if event is not None:
            self._emit(event)
