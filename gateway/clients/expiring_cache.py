"""A per-process cache whose entries expire after a few seconds: what lets the hot path skip
Redis for keys and templates while a change (a revoked key, a new template version) still
reaches every worker within the TTL.

Bounded: at ``max_entries`` expired entries are dropped first, and if a flood of distinct keys
still fills it, it starts over (a cache miss costs one round trip, never a wrong answer).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["CacheEntry", "ExpiringCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class CacheEntry(Generic[V]):
    value: V
    fresh: bool  # False: past its TTL, usable only as a stale answer when the store is down


class ExpiringCache(Generic[K, V]):
    def __init__(
        self,
        ttl_s: float,
        *,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: K) -> CacheEntry[V] | None:
        found = self._entries.get(key)
        if found is None:
            return None
        return CacheEntry(found[1], found[0] > self._clock())

    def put(self, key: K, value: V, *, ttl_s: float | None = None) -> None:
        """Remember ``value`` for ``ttl_s`` (the cache's TTL when None; ``math.inf``: for good)."""
        now = self._clock()
        if len(self._entries) >= self._max:
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            if len(self._entries) >= self._max:
                self._entries.clear()
        self._entries[key] = (now + (self.ttl_s if ttl_s is None else ttl_s), value)

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)
