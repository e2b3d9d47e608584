"""``Breakers`` (what dispatch uses) over real Redis: events reach the sink once per change, a
closed breaker is remembered briefly per worker, and a hung Redis does not hold requests up."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from devstack.servers import RedisServer
from gateway.clients.breaker_store import BreakerStore
from gateway.clients.breakers import CLOSED_MEMORY_S, Breakers
from gateway.policy.breaker import Admission, BreakerConfig
from shared.records import BreakerEventRecord
from tests.integration.gateway.test_breaker_store import Clock

pytestmark = pytest.mark.integration

CFG = BreakerConfig(failure_threshold=2, window_s=60, cooldown_s=10, probe_timeout_s=30)


def _worker(
    redis: Redis, prefix: str, wall: Clock, events: list[BreakerEventRecord]
) -> tuple[Breakers, Clock]:
    local = Clock()
    store = BreakerStore(redis, CFG, prefix=prefix, clock=wall)
    return Breakers(store, events.append, clock=local), local


async def test_cycle_emits_each_change_once_and_workers_share_it(redis: Redis) -> None:
    prefix, wall = f"t{uuid.uuid4().hex[:12]}", Clock()
    events: list[BreakerEventRecord] = []
    a, a_clock = _worker(redis, prefix, wall, events)
    b, _ = _worker(redis, prefix, wall, events)

    assert await a.admit("p") is Admission.ALLOW  # remembered as closed by worker a
    assert await b.failure("p") is False
    assert await b.failure("p") is True  # the second failure opens it
    assert [(e.from_state, e.to_state) for e in events] == [("closed", "open")]
    assert await b.admit("p") is Admission.REJECT
    assert await a.admit("p") is Admission.ALLOW  # a still remembers "closed"...
    a_clock.now += CLOSED_MEMORY_S
    assert await a.admit("p") is Admission.REJECT  # ...for CLOSED_MEMORY_S at most

    wall.now += CFG.cooldown_s
    assert await a.admit("p") is Admission.PROBE
    assert await b.admit("p") is Admission.REJECT  # one probe at a time
    await a.probe_succeeded("p")
    assert await b.admit("p") is Admission.ALLOW
    assert [(e.from_state, e.to_state) for e in events] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert {e.provider for e in events} == {"p"}
    [health] = await a.snapshot(["p"])
    assert health.state.value == "closed"


async def test_hung_redis_fails_open_within_the_budget(
    redis_factory: Callable[[], RedisServer],
) -> None:
    server = redis_factory()
    client = Redis.from_url(server.url, socket_timeout=30)
    events: list[BreakerEventRecord] = []
    breakers = Breakers(BreakerStore(client, CFG, prefix="hung"), events.append)
    try:
        with server.hung():  # accepts connections, never answers
            admitted = await asyncio.wait_for(breakers.admit("p"), timeout=20)
            assert admitted is Admission.ALLOW and breakers.budget_overruns == 1
            assert await asyncio.wait_for(breakers.failure("p"), timeout=20) is False
            assert breakers.budget_overruns == 2 and events == []
    finally:
        await client.aclose()


async def test_one_orgs_answered_failures_turn_away_that_org_only(redis: Redis) -> None:
    """Issue 10: org B's self-inflicted 5xx must not open the provider for org A; two orgs'
    failures do; a provider no request can break (unreachable) opens for all as before."""
    prefix, wall = f"t{uuid.uuid4().hex[:12]}", Clock()
    events: list[BreakerEventRecord] = []
    config = BreakerConfig(failure_threshold=2, window_s=60, cooldown_s=10, min_orgs=2)
    breakers = Breakers(BreakerStore(redis, config, prefix=prefix, clock=wall), events.append)
    assert await breakers.failure("p", "org-b", answered=True) is False
    assert await breakers.failure("p", "org-b", answered=True) is True  # org B's own breaker
    assert await breakers.admit("p", "org-b") is Admission.REJECT
    assert await breakers.admit("p", "org-a") is Admission.ALLOW
    assert [e.reason for e in events] == ["org org-b: 2 failures within 60s"]
    # one failure of org C: the window holds failures of two orgs, the provider-wide one opens
    assert await breakers.failure("p", "org-c", answered=True) is True
    assert await breakers.admit("p", "org-a") is Admission.REJECT
    assert events[-1].reason == "3 failures within 60s from 2 orgs"
    other = f"t{uuid.uuid4().hex[:12]}"
    down = Breakers(BreakerStore(redis, config, prefix=other, clock=wall), events.append)
    await down.failure("q", "org-b")  # not answered: connection refused
    await down.failure("q", "org-b")
    assert await down.admit("q", "org-a") is Admission.REJECT
