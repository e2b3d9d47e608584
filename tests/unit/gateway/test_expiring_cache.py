from __future__ import annotations

import math

from gateway.clients.expiring_cache import ExpiringCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_fresh_within_its_ttl_then_stale_but_still_there() -> None:
    clock = Clock()
    cache: ExpiringCache[str, int] = ExpiringCache(5.0, max_entries=10, clock=clock)
    assert cache.lookup("a") is None
    cache.put("a", 1)
    clock.now += 4.9
    entry = cache.lookup("a")
    assert entry is not None and entry.fresh and entry.value == 1
    clock.now += 0.2
    entry = cache.lookup("a")
    assert entry is not None and not entry.fresh and entry.value == 1


def test_per_entry_ttl_and_pop() -> None:
    clock = Clock()
    cache: ExpiringCache[str, str] = ExpiringCache(1.0, max_entries=10, clock=clock)
    cache.put("pinned", "v1", ttl_s=math.inf)
    cache.put("latest", "v2")
    clock.now += 1e6
    pinned, latest = cache.lookup("pinned"), cache.lookup("latest")
    assert pinned is not None and pinned.fresh
    assert latest is not None and not latest.fresh
    cache.pop("pinned")
    cache.pop("never-there")
    assert cache.lookup("pinned") is None


def test_full_cache_drops_expired_entries_first_then_starts_over() -> None:
    clock = Clock()
    cache: ExpiringCache[int, int] = ExpiringCache(1.0, max_entries=3, clock=clock)
    cache.put(1, 1)
    cache.put(2, 2)
    clock.now += 2  # 1 and 2 expire
    cache.put(3, 3)
    cache.put(4, 4)  # full: the expired ones go, 3 stays
    assert len(cache) == 2 and cache.lookup(3) is not None and cache.lookup(1) is None
    cache.put(5, 5)
    cache.put(6, 6)  # full of fresh entries: start over
    assert len(cache) == 1 and cache.lookup(6) is not None
