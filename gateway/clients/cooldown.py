"""A store that just failed is left alone for a moment.

During an outage, and worse during a hang (the store accepts the connection and never answers),
every call pays the client's timeout. After one failure a ``Cooldown`` answers "down" for
``seconds`` without a call, so a request pays that timeout at most once per cooldown; what the
caller does instead (fail open, count the write as failed) is the caller's policy.

Invariants:
- One ``Cooldown`` per store, shared by its callers (``redis_cooldown``: the gateway's limits
  and exact cache): a timeout one of them saw spares the others the next one.
- Only an error that says the store is down or hung trips it (``trips_on``). An error in
  answer to one call (a script error, a wrong type) fails that call only: a key one tenant's
  request provoked must not switch every tenant's limits off.
"""

from __future__ import annotations

import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["REDIS_COOLDOWN_S", "REDIS_UNREACHABLE", "Cooldown", "redis_cooldown"]

REDIS_COOLDOWN_S = 1.0
"""How long the gateway's Redis callers (the limits, the exact cache) leave Redis alone after
it failed them."""

REDIS_UNREACHABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
)
"""Redis down or hung: what trips its cooldown."""


class Cooldown:
    def __init__(self, seconds: float, trips_on: tuple[type[BaseException], ...]) -> None:
        self.seconds = seconds
        self._trips_on = trips_on
        self._until = 0.0

    def failed(self, exc: BaseException) -> None:
        """A call failed with ``exc``: if that says the store is down or hung, leave it alone
        for ``seconds`` from now."""
        if isinstance(exc, self._trips_on):
            self._until = time.monotonic() + self.seconds

    @property
    def active(self) -> bool:
        return time.monotonic() < self._until


def redis_cooldown(seconds: float = REDIS_COOLDOWN_S) -> Cooldown:
    return Cooldown(seconds, REDIS_UNREACHABLE)
