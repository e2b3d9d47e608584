"""The usage counters on a real Redis count each entry once, however often it is sent: the
live batch whose answer was lost and its spooled copy, or a spool batch sent again after a
drainer died before recording its offset."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from gateway.clients.usage_counters import UsageCounters
from gateway.domain import UsageEntry

pytestmark = pytest.mark.integration


def _entry(seq: int, tokens: int, cost: float | None, now: int, origin: str = "gw-a") -> UsageEntry:
    return UsageEntry("k1", tokens, cost, now, org_id="acme", origin=origin, seq=seq)


async def test_an_entry_is_counted_once_however_often_it_is_added(
    redis: Redis, prefix: str
) -> None:
    counters = UsageCounters(redis, prefix=prefix)
    now = int(time.time() * 1000)
    first = [_entry(i, 10 + i, 0.1 * (i + 1), now) for i in range(5)]
    assert await counters.add(first) == 5
    assert await counters.add(first) == 0, "the same batch again"
    later = [_entry(i, 100, 0.5, now) for i in range(5, 8)]
    # overlapping: two already counted, three new, one of another process with the same number
    assert await counters.add([*first[3:], *later, _entry(4, 1000, None, now, origin="gw-b")]) == 4

    usage = await counters.usage("k1", now, org_id="acme")
    tokens = sum(e.tokens for e in first) + 300 + 1000
    assert (usage.day_tokens, usage.month_tokens) == (tokens, tokens)
    cost = sum(e.cost_usd or 0 for e in first) + 1.5
    assert usage.day_cost_usd == pytest.approx(cost, rel=1e-12)
    assert usage.month_cost_usd == pytest.approx(cost, rel=1e-12)


async def test_an_entry_without_identity_is_counted_each_time(redis: Redis, prefix: str) -> None:
    """Lines spooled by a gateway before entries had identities: counted as sent (as then)."""
    counters = UsageCounters(redis, prefix=prefix)
    now = int(time.time() * 1000)
    old = UsageEntry("k1", 7, 0.25, now)
    assert await counters.add([old]) == 1
    assert await counters.add([old]) == 1
    usage = await counters.usage("k1", now)
    assert (usage.day_tokens, usage.day_cost_usd) == (14, 0.5)


async def test_the_offset_and_last_used_are_written_with_the_entries(
    redis: Redis, prefix: str
) -> None:
    counters = UsageCounters(redis, prefix=prefix)
    now = int(time.time() * 1000)
    added = await counters.add(
        [_entry(0, 3, None, now)], last_used_ms={"k1": now}, offset=(f"{prefix}:off", 42, 60)
    )
    assert added == 1
    assert await redis.get(f"{prefix}:off") == b"42"
    assert 0 < await redis.ttl(f"{prefix}:off") <= 60
    assert await counters.last_used(["k1"]) == {"k1": now}
    usage = await counters.usage("k1", now, org_id="acme")
    assert (usage.day_tokens, usage.day_cost_usd) == (3, 0.0), "no cost: no cost field"
