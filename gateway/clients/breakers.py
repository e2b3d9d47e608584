"""The circuit breakers as dispatch sees them: the Redis-shared ``BreakerStore`` plus a short
in-process memory of "closed", and every state change sent to the breaker-events sink.

Invariants:
- Two breakers stand in a request's way per provider: the provider-wide one (opens on failures
  from several orgs) and its org's own (``gateway.policy.breaker``); either open skips it.
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

from gateway.clients.breaker_store import BreakerStore, ProviderHealth, org_scope
from gateway.metrics import access_counters
from gateway.policy.breaker import ANY_ORG, Admission, BreakerState
from shared.metrics import counted
from shared.records import BreakerEventRecord

_T = TypeVar("_T")

__all__ = ["ADMIT_BUDGET_S", "CLOSED_MEMORY_S", "RECORD_BUDGET_S", "Breakers"]

log = logging.getLogger(__name__)

CLOSED_MEMORY_S = 1.0
ADMIT_BUDGET_S = 0.25
RECORD_BUDGET_S = 1.0


class Breakers:
    budget_overruns = counted("budget_overruns")

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
        self.counters = access_counters("breaker", "budget_overruns")

    @property
    def redis_errors(self) -> int:
        return self._store.redis_errors

    def _scopes(self, provider: str, org: str) -> list[str]:
        """The provider-wide breaker, then the org's own (none for a request of no org)."""
        return [provider, org_scope(provider, org)] if org else [provider]

    async def admit(self, provider: str, org: str = "") -> Admission:
        """REJECT when either breaker is open; PROBE when either admits this as its probe."""
        result = Admission.ALLOW
        for scope in self._scopes(provider, org):
            admission = await self._admit_scope(scope, provider)
            if admission is Admission.REJECT:
                return admission
            if admission is Admission.PROBE:
                result = admission
        return result

    async def _admit_scope(self, scope: str, provider: str) -> Admission:
        now = self._clock()
        if self._closed_until.get(scope, 0.0) > now:
            return Admission.ALLOW
        admission, event = await self._within(
            ADMIT_BUDGET_S, self._store.admit(scope), (Admission.ALLOW, None), provider
        )
        self._publish(event)
        if admission is Admission.ALLOW:
            self._closed_until[scope] = now + CLOSED_MEMORY_S
        return admission

    async def failure(self, provider: str, org: str = "", *, answered: bool = False) -> bool:
        """Count a failure of ``org``'s request; True when a breaker in its way opened.
        ``answered``: the provider answered with an error status, which a request's content can
        provoke, so it is weighed per org; otherwise (unreachable, timeout) it counts for all."""
        opened = False
        weighed_as = org if answered and org else ANY_ORG
        for scope in self._scopes(provider, org):
            self._closed_until.pop(scope, None)
            event = await self._within(
                RECORD_BUDGET_S, self._store.record_failure(scope, weighed_as), None, provider
            )
            self._publish(event)
            opened = opened or (event is not None and event.to_state == BreakerState.OPEN.value)
        return opened

    async def probe_succeeded(self, provider: str, org: str = "") -> None:
        for scope in self._scopes(provider, org):
            self._publish(
                await self._within(
                    RECORD_BUDGET_S, self._store.record_success(scope), None, provider
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
            self.counters.inc("budget_overruns")
            log.warning(
                "circuit breaker of %s: redis gave no answer within %gs; failing open",
                provider,
                budget_s,
            )
            return fail_open

    def _publish(self, event: BreakerEventRecord | None) -> None:
        if event is not None:
            self._emit(event)
