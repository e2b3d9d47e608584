from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import pytest
from redis.asyncio import Redis

from devstack.servers import RedisServer, free_port
from gateway.clients.breaker_store import BreakerStore
from gateway.policy.breaker import Admission, BreakerConfig, BreakerState
from shared.codec import decode_record, encode_record
from shared.records import BreakerEventRecord
from shared.streams import Sink

pytestmark = pytest.mark.integration

CFG = BreakerConfig(failure_threshold=3, window_s=60, cooldown_s=10, probe_timeout_s=30)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clients(redis_server: RedisServer) -> AsyncIterator[list[Redis]]:
    made = [Redis.from_url(redis_server.url) for _ in range(4)]
    yield made
    for client in made:
        await client.aclose()


async def test_full_cycle_shared_between_workers(clients: list[Redis], prefix: str) -> None:
    clock = Clock()
    a, b = (BreakerStore(c, CFG, prefix=prefix, clock=clock) for c in clients[:2])
    assert await a.admit("p") == (Admission.ALLOW, None)
    assert await a.record_failure("p") is None
    assert await b.record_failure("p") is None
    opened = await a.record_failure("p")
    assert opened is not None and (opened.from_state, opened.to_state) == ("closed", "open")
    assert (
        cast(BreakerEventRecord, decode_record(Sink.BREAKER_EVENTS, encode_record(opened)))
        == opened
    )

    assert (await b.admit("p"))[0] is Admission.REJECT  # worker b sees a's opening
    [health] = await b.snapshot(["p"])
    assert (health.state, health.recent_failures) == (BreakerState.OPEN, 3)
    assert health.retry_at == clock.now + 10

    clock.now += 10
    decision, half = await b.admit("p")
    assert decision is Admission.PROBE and half is not None and half.to_state == "half_open"
    assert (await a.admit("p"))[0] is Admission.REJECT
    closed = await b.record_success("p")
    assert closed is not None and (closed.from_state, closed.to_state) == ("half_open", "closed")
    assert await a.admit("p") == (Admission.ALLOW, None)
    assert await clients[0].exists(f"{prefix}:breaker:p") == 0  # fresh closed state is no key


async def test_only_one_probe_among_concurrent_workers(clients: list[Redis], prefix: str) -> None:
    clock = Clock()
    stores = [BreakerStore(c, CFG, prefix=prefix, clock=clock) for c in clients]
    for _ in range(3):
        await stores[0].record_failure("p")
    clock.now += 11
    results = await asyncio.gather(*(s.admit("p") for s in stores for _ in range(5)))
    decisions = [d for d, _ in results]
    assert decisions.count(Admission.PROBE) == 1
    assert decisions.count(Admission.REJECT) == len(decisions) - 1
    events = [e for _, e in results if e is not None]
    assert len(events) == 1 and events[0].to_state == "half_open"


async def test_concurrent_failures_open_once(clients: list[Redis], prefix: str) -> None:
    stores = [BreakerStore(c, CFG, prefix=prefix) for c in clients]
    events = await asyncio.gather(*(s.record_failure("p") for s in stores for _ in range(5)))
    opened = [e for e in events if e is not None]
    assert len(opened) == 1 and isinstance(opened[0], BreakerEventRecord)
    [health] = await stores[0].snapshot(["p"])
    assert health.state is BreakerState.OPEN and health.recent_failures == 20


async def test_probe_failure_reopens(clients: list[Redis], prefix: str) -> None:
    clock = Clock()
    store = BreakerStore(clients[0], CFG, prefix=prefix, clock=clock)
    for _ in range(3):
        await store.record_failure("p")
    clock.now += 10
    assert (await store.admit("p"))[0] is Admission.PROBE
    reopened = await store.record_failure("p")
    assert reopened is not None and reopened.reason == "probe failed"
    [health] = await store.snapshot(["p"])
    assert health.state is BreakerState.OPEN and health.opened_at == clock.now


async def test_snapshot_of_unknown_providers_is_closed(clients: list[Redis], prefix: str) -> None:
    store = BreakerStore(clients[0], CFG, prefix=prefix)
    rows = await store.snapshot(["a", "b"])
    assert [(r.provider, r.state, r.recent_failures) for r in rows] == [
        ("a", BreakerState.CLOSED, 0),
        ("b", BreakerState.CLOSED, 0),
    ]


async def test_fails_open_without_redis() -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    store = BreakerStore(dead, CFG)
    try:
        assert await store.admit("p") == (Admission.ALLOW, None)
        assert await store.record_failure("p") is None
        assert await store.record_success("p") is None
    finally:
        await dead.aclose()
    assert store.redis_errors == 3
