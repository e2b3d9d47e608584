"""A store that just failed is left alone for a moment.

During an outage, and worse during a hang (the store accepts the connection and never answers),
every call pays the client's timeout. After one failure a ``Cooldown`` answers "down" for
``seconds`` without a call, so a request pays that timeout at most once per cooldown; what the
caller does instead (fail open, count the write as failed) is the caller's policy.
"""

from __future__ import annotations

import time

__all__ = ["REDIS_COOLDOWN_S", "Cooldown"]

REDIS_COOLDOWN_S = 1.0
"""How long the gateway's Redis callers (the limits, the exact cache) leave Redis alone after
it failed them."""


class Cooldown:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._until = 0.0

    def trip(self) -> None:
        """The store failed just now."""
        self._until = time.monotonic() + self.seconds

    @property
    def active(self) -> bool:
        return time.monotonic() < self._until
