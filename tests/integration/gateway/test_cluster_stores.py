"""Issue 12: the gateway's Redis stores on a real 3-master Redis Cluster (the e2e test covers the
request path): admin writes that use transactions on one node, the key lookup, usage counters,
the limits script with every key in the org's slot, templates, routing config, the audit log,
the breaker's compare-and-set and the publisher's fences."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio import RedisCluster as ClusterClient
from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError

from devstack.servers import RedisCluster
from gateway.clients.admin_store import AdminStore
from gateway.clients.audit_log import AuditLog
from gateway.clients.breaker_store import BreakerStore
from gateway.clients.command_batch import script_batch
from gateway.clients.key_auth import KeyAuthenticator
from gateway.clients.outage_spool import OutageSpool
from gateway.clients.publisher import Publisher, _fenced
from gateway.clients.ratelimiter import Gates, RateLimiter, limits_call
from gateway.clients.routing_config import RoutingConfigStore
from gateway.clients.templates import TemplateStore
from gateway.clients.usage_counters import UsageCounters, usage_expiry_s
from gateway.domain import Bucket, UsageEntry
from gateway.policy.breaker import BreakerConfig, BreakerState
from gateway.policy.keys import Org
from gateway.policy.ratelimit import bucket_key, parse_policy
from gateway.policy.templates import TemplateMessage
from gateway.settings import PublisherSettings, SpoolSettings
from shared.redis_client import open_redis, org_tag
from shared.settings import RedisSettings
from shared.streams import Sink, stream_key

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with RedisCluster(Path(tmp_path_factory.mktemp("cluster"))) as made:
        yield made


@pytest.fixture
async def redis(cluster: RedisCluster) -> AsyncIterator[Redis]:
    client = open_redis(RedisSettings(url=cluster.url, cluster=True))
    yield client
    await client.aclose()


async def test_keys_orgs_and_usage_on_a_cluster(redis: Redis) -> None:
    store = AdminStore(redis, prefix="c1")
    await store.put_org(Org(org_id="acme", name="Acme"))
    new, key = await store.create_key("acme", name="ci")
    found, org = await KeyAuthenticator(redis, prefix="c1").authenticate(new.secret)
    assert (found.key_id, org.name) == (key.key_id, "Acme")
    assert [k.key_id for k in await store.list_keys("acme")] == [key.key_id]
    stored = await store.get_org("acme")
    assert stored is not None and stored.name == "Acme"
    counters = UsageCounters(redis, prefix="c1")
    now = int(time.time() * 1000)
    entry = UsageEntry(key.key_id, 40, 0.25, now, org_id="acme", origin="gw1", seq=0)
    assert await counters.add([entry], last_used_ms={key.key_id: now}) == 1
    assert await counters.add([entry]) == 0, "an entry is counted once, on a cluster too"
    usage = await counters.usage(key.key_id, now, org_id="acme")
    assert (usage.day_tokens, usage.month_cost_usd) == (40, 0.25)
    assert await store.revoke_key(key.key_id)
    assert (await store.get_key(key.key_id)).revoked  # type: ignore[union-attr]


async def test_limits_script_takes_every_key_of_the_org_in_one_call(redis: Redis) -> None:
    store, limiter = UsageCounters(redis, prefix="c2"), RateLimiter(redis)
    now = int(time.time() * 1000)
    policy = parse_policy("2;w=60")
    bucket = Bucket(bucket_key("c2", org_tag("acme", True), "org", policy), policy)
    day, month = store.usage_keys("k1", now, org_id="acme")
    gates = Gates(
        request_counter=store.request_counter("acme", now),
        counter_expire_at_s=usage_expiry_s(now, monthly=True),
        usage_day_key=day,
        usage_month_key=month,
    )
    answers = [await limiter.admit(limits_call([bucket], gates)) for _ in range(3)]
    assert [a.admitted for a in answers] == [True, True, False]
    assert not any(a.fail_open for a in answers)
    assert answers[1].requests_this_month == 2


async def test_templates_routing_audit_and_breakers_on_a_cluster(redis: Redis) -> None:
    templates = TemplateStore(redis, prefix="c3")
    await templates.put("acme", "greet", [TemplateMessage(role="user", content="Hi {{name}}")])
    assert (await templates.get("acme", "greet")).version == 1
    routing = RoutingConfigStore(redis, prefix="c3")
    await routing.put_route("gpt-4o", ["openai"])
    assert await routing.routes() == {"gpt-4o": ["openai"]}
    assert await routing.version() == 1
    audit = AuditLog(redis, prefix="c3")
    await audit.append({"what": "x"}, ["acme", "globex"])
    assert await audit.entries("globex") == [{"what": "x"}]
    breakers = BreakerStore(redis, BreakerConfig(failure_threshold=2), prefix="c3")
    for _ in range(2):
        await breakers.record_failure("openai")
    [row] = await breakers.snapshot(["openai"])
    assert row.state is BreakerState.OPEN
    assert breakers.redis_errors == 0


async def _reads(nodes: list[Redis]) -> int:
    """Read events summed over the nodes: one per pipeline a node received (or per 16 KiB)."""
    return sum([int((await node.info("stats"))["total_reads_processed"]) for node in nodes])


ECHO = """
if ARGV[1] == 'boom' then return redis.error_reply('boom ' .. KEYS[1]) end
redis.call('INCR', KEYS[1])
return ARGV[1]
"""


async def test_concurrent_script_calls_share_one_round_trip_per_node(
    cluster: RedisCluster, redis: Redis
) -> None:
    """The limits script's batching on a cluster: each node gets one pipeline of the calls whose
    keys it serves; each call its own answer or error, a flushed script loaded again."""
    batch = script_batch(redis, redis.register_script(ECHO))
    await batch(["warm"], ["x"])  # a lone call: straight through the Script, which loads it
    tags = [f"org-{i}" for i in range(200)]
    nodes = [Redis.from_url(node.url) for node in cluster.nodes]
    before = await _reads(nodes)
    results = await asyncio.gather(
        *(batch([f"{{{t}}}:n"], ["boom" if i % 10 == 3 else f"v{i}"]) for i, t in enumerate(tags)),
        return_exceptions=True,
    )
    reads = await _reads(nodes) - before
    for i, result in enumerate(results):
        if i % 10 == 3:
            assert isinstance(result, ResponseError) and f"boom {{org-{i}}}:n" in str(result)
        else:
            assert result == f"v{i}".encode(), (i, result)
    assert await redis.get("{org-0}:n") == b"1" and await redis.get("{org-3}:n") is None
    # 3 nodes, one pipeline each, and an INFO per node: not 200
    assert reads <= 9, reads

    for node in nodes:
        await node.script_flush()
        await node.aclose()
    again = await asyncio.gather(*(batch([f"{{{t}}}:m"], [t]) for t in tags[:30]))
    assert again == [t.encode() for t in tags[:30]]


async def test_a_dead_master_fails_only_its_own_script_calls(
    cluster: RedisCluster, redis: Redis
) -> None:
    """Batched calls on a cluster with one master down: the calls its slots hold fail (the
    limiter fails open on them), the other calls get their answers, batch after batch; once the
    master is back, all do."""
    batch = script_batch(redis, redis.register_script(ECHO))
    await batch(["warm"], ["x"])
    assert isinstance(redis, ClusterClient)
    dead = cluster.nodes[2]
    keys = [f"{{dead-{i}}}:n" for i in range(60)]
    on_dead = {k for k in keys if redis.get_node_from_key(k).port == dead.port}
    assert 0 < len(on_dead) < len(keys)
    dead.kill()
    try:
        for _ in range(3):
            results = await asyncio.gather(*(batch([k], [k]) for k in keys), return_exceptions=True)
            failed = {k for k, r in zip(keys, results, strict=True) if isinstance(r, Exception)}
            assert on_dead <= failed
            # redis-py's cluster client closes every node's connections when one fails, which
            # now and then cuts a live node's call in flight: a few, never most (redis-py's
            # cluster pipeline failed all of them, after sleeps)
            assert len(failed - on_dead) < (len(keys) - len(on_dead)) / 2, failed - on_dead
            assert all(
                r == k.encode() for k, r in zip(keys, results, strict=True) if k not in failed
            )
    finally:
        dead.start()
        cluster.wait_ok()
    results = await asyncio.gather(*(batch([k], [k]) for k in keys), return_exceptions=True)
    assert results == [k.encode() for k in keys]


async def test_every_node_packs_commands_with_hiredis(redis: Redis) -> None:
    """The cluster's connections are ours (``shared.redis_client._Cluster``), found nodes and
    the seed alike, and what they pack is what redis-py packs."""
    await asyncio.gather(*(redis.set(f"{{pack-{i}}}", i) for i in range(30)))
    assert isinstance(redis, ClusterClient)
    connections = [c for node in redis.get_nodes() for c in node._connections]
    assert len({c.port for c in connections}) == 3
    assert all(type(c).__name__ == "_HiredisPacked" for c in connections)
    args = ("EVALSHA", "abc", 2, "{o}:k", b"\x00v", 1.5)
    assert b"".join(connections[0].pack_command(*args)) == b"".join(
        Connection().pack_command(*args)
    )
    assert await redis.get("{pack-7}") == b"7"


async def test_a_batch_on_a_client_that_has_not_read_the_slot_map_yet(
    cluster: RedisCluster,
) -> None:
    """The first use of a new cluster client is a batch (a worker's first requests arrive
    together): the slot map is not read yet, so every call goes alone (which reads it), and
    every caller gets its answer. It used to leave them all waiting."""
    fresh = open_redis(RedisSettings(url=cluster.url, cluster=True))
    try:
        batch = script_batch(fresh, fresh.register_script(ECHO))
        async with asyncio.timeout(20):
            results = await asyncio.gather(
                *(batch([f"{{first-{i}}}"], [str(i)]) for i in range(30))
            )
        assert results == [str(i).encode() for i in range(30)]
    finally:
        await fresh.aclose()


async def test_fenced_records_on_a_cluster_reach_their_shards_once(
    redis: Redis, tmp_path: Path
) -> None:
    """The publisher on a cluster with 3 stream shards: each slot's records in a call of their
    own with their fences (one slot each: no CROSSSLOT); a spool drained afterwards holding
    fenced copies of those records (a call whose answer was lost, then spooled) adds only
    its plain lines, into shard 0."""
    prefix = f"fence{uuid.uuid4().hex[:6]}"
    spool = OutageSpool.open(SpoolSettings(dir=tmp_path), [s.value for s in Sink], prefix=prefix)
    publisher = Publisher(redis, PublisherSettings(), prefix=prefix, spool=spool, shards=3)
    for i in range(30):
        record = f'{{"schema_version":3,"request_id":"r{i}"}}'.encode()
        assert publisher.submit(Sink.REQUESTS, record, routing_key=f"r{i}")
    sent = publisher._drain.held()
    assert await publisher.send(sent) is None
    shards = [stream_key(Sink.REQUESTS, prefix, s) for s in range(3)]
    lengths = [await redis.xlen(k) for k in shards]
    assert sum(lengths) == 30 and all(lengths), lengths

    spool.append(
        Sink.REQUESTS.value,
        [_fenced(key, fence, seq, payload) for key, payload, fence, seq in sent]
        + [b'{"schema_version":3,"request_id":"plain-1"}', b'{"schema_version":3}'],
    )
    assert await spool.drain(redis, publisher.drains) == 32
    assert [await redis.xlen(k) for k in shards] == [lengths[0] + 2, lengths[1], lengths[2]]
    assert publisher.deduplicated == 30
