"""Circuit-breaker state per provider, shared by every gateway worker through Redis.

Invariants:
- ``<p>:breaker:<provider>`` holds the provider-wide ``BreakerStatus`` as JSON (it opens only
  on failures from ``min_orgs`` orgs), ``<p>:breaker:<provider>@org:<org>`` one org's own
  breaker of that provider (``gateway.policy.breaker``); every change is a WATCH/MULTI
  transaction over the pure functions of ``gateway.policy.breaker``, so two workers never both
  apply a transition (one admitted probe at a time; one open event per opening).
- The common case costs one GET and no write: admitting to a closed breaker and successes
  outside half-open change nothing.
- Each method that changes the state returns the ``BreakerEventRecord`` to publish, or None.
- Time is the caller's wall clock (seconds); breakers work in tens of seconds, far above the
  skew between hosts kept by NTP.
- Fail open: if Redis cannot answer, providers are admitted and failures go uncounted; each
  such call is logged and counted (``redis_errors``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from gateway.policy.breaker import (
    Admission,
    BreakerConfig,
    BreakerState,
    BreakerStatus,
    Transition,
    admit,
    on_failure,
    on_success,
    recent_failures,
    to_event,
)
from shared.records import BreakerEventRecord
from shared.redis_keys import RedisKeys

__all__ = ["BreakerStore", "ProviderHealth", "org_scope"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_ATTEMPTS = 20
_KEY_TTL_S = 86_400
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(BreakerStatus)


@dataclass(frozen=True)
class ProviderHealth:
    """One row of ``GET /health/providers``."""

    provider: str
    state: BreakerState
    recent_failures: int
    opened_at: float
    retry_at: float  # when an open breaker admits its probe (0 unless open)


def _decode(raw: bytes | None) -> BreakerStatus:
    return BreakerStatus() if raw is None else _decoder.decode(raw)


class BreakerStore:
    def __init__(
        self,
        redis: Redis,
        config: BreakerConfig,
        *,
        prefix: str = "floopy",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._config = config
        self._org_config = dataclasses.replace(config, min_orgs=1)
        self._k = RedisKeys(prefix)
        self._clock = clock
        self.redis_errors = 0

    def _key(self, scope: str) -> str:
        return self._k.breaker(scope)

    def _config_of(self, scope: str) -> BreakerConfig:
        """An org's own breaker opens on that org's failures alone."""
        return self._org_config if "@org:" in scope else self._config

    async def admit(self, scope: str) -> tuple[Admission, BreakerEventRecord | None]:
        """ALLOW or PROBE: send the request; REJECT: skip this provider (try the next target).
        ``scope``: a provider, or ``org_scope(provider, org)``."""
        config = self._config_of(scope)
        try:
            status = _decode(await self._redis.get(self._key(scope)))
            if status.state is BreakerState.CLOSED:
                return Admission.ALLOW, None
            return await self._update(scope, lambda s, now: admit(s, now, config))
        except RedisError as exc:
            self._failed_open("admit", scope, exc)
            return Admission.ALLOW, None

    async def record_failure(self, scope: str, org: str = "") -> BreakerEventRecord | None:
        config = self._config_of(scope)
        try:
            _, event = await self._update(
                scope, lambda s, now: _wrap(on_failure(s, now, config, org))
            )
        except RedisError as exc:
            self._failed_open("record_failure", scope, exc)
            return None
        return event

    async def record_success(self, scope: str) -> BreakerEventRecord | None:
        config = self._config_of(scope)
        try:
            status = _decode(await self._redis.get(self._key(scope)))
            if status.state is not BreakerState.HALF_OPEN:
                return None
            _, event = await self._update(scope, lambda s, now: _wrap(on_success(s, now, config)))
        except RedisError as exc:
            self._failed_open("record_success", scope, exc)
            return None
        return event

    async def snapshot(self, providers: Sequence[str]) -> list[ProviderHealth]:
        """State and failures within the window for each provider (one MGET); raises RedisError."""
        if not providers:
            return []
        raws = await self._redis.mget([self._key(p) for p in providers])
        now = self._clock()
        rows = []
        for provider, raw in zip(providers, raws, strict=True):
            status = _decode(raw)
            open_ = status.state is BreakerState.OPEN
            rows.append(
                ProviderHealth(
                    provider=provider,
                    state=status.state,
                    recent_failures=len(recent_failures(status, now, self._config)),
                    opened_at=status.opened_at,
                    retry_at=status.opened_at + self._config.cooldown_s if open_ else 0.0,
                )
            )
        return rows

    async def _update(
        self,
        provider: str,
        step: Callable[[BreakerStatus, float], tuple[_T, BreakerStatus, Transition | None]],
    ) -> tuple[_T, BreakerEventRecord | None]:
        """Apply ``step`` to the stored status atomically (optimistic WATCH, retried)."""
        key = self._key(provider)
        async with self._redis.pipeline(transaction=True) as pipe:
            for _ in range(_ATTEMPTS):
                try:
                    await pipe.watch(key)
                    status = _decode(await pipe.get(key))
                    now = self._clock()
                    result, new, transition = step(status, now)
                    if new == status:
                        await pipe.unwatch()  # type: ignore[no-untyped-call]  # untyped in redis-py
                        return result, None
                    pipe.multi()  # type: ignore[no-untyped-call]  # untyped in redis-py
                    if new == BreakerStatus():
                        pipe.delete(key)
                    else:
                        pipe.set(key, _encoder.encode(new), ex=_KEY_TTL_S)
                    await pipe.execute()
                except WatchError:
                    continue
                event = _event(provider, transition, now) if transition else None
                if event is not None:
                    log.warning(
                        "circuit breaker of %s: %s -> %s (%s)",
                        provider,
                        event.from_state,
                        event.to_state,
                        event.reason,
                    )
                return result, event
        raise RedisError(f"breaker state of {provider} kept changing under {_ATTEMPTS} attempts")

    def _failed_open(self, what: str, provider: str, exc: Exception) -> None:
        self.redis_errors += 1
        log.warning(
            "circuit breaker %s for %s skipped: redis unavailable (%s: %s)",
            what,
            provider,
            type(exc).__name__,
            exc,
        )


def org_scope(provider: str, org: str) -> str:
    """The breaker of ``org``'s requests to ``provider`` (org ids never hold ``@``)."""
    return f"{provider}@org:{org}"


def _event(scope: str, transition: Transition, now: float) -> BreakerEventRecord:
    """Events name the provider; an org's own breaker says whose in the reason."""
    provider, _, org = scope.partition("@org:")
    if org:
        transition = dataclasses.replace(transition, reason=f"org {org}: {transition.reason}")
    return to_event(provider, transition, int(now * 1000))


def _wrap(
    pair: tuple[BreakerStatus, Transition | None],
) -> tuple[None, BreakerStatus, Transition | None]:
    return None, pair[0], pair[1]
