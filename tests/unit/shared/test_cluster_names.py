"""Stream shards and hash slots: the names the gateway and the ingester agree on, and the keys
the limits script takes together landing in one slot of a Redis Cluster (no sockets: redis-py's
cluster client connects on first use only)."""

from __future__ import annotations

from collections import Counter

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from gateway.clients.usage_counters import UsageCounters
from gateway.policy.ratelimit import bucket_key, parse_policy
from shared.redis_client import org_tag, slot_of
from shared.streams import Sink, shard_of, stream_key, stream_keys


def test_one_shard_keeps_the_old_stream_names() -> None:
    assert stream_key(Sink.REQUESTS, "floopy") == "floopy:stream:requests"
    shards = stream_keys(Sink.SPANS, "p", 3)
    assert shards == ["p:stream:spans", "p:stream:spans:1", "p:stream:spans:2"]
    assert shard_of("any-request-id", 1) == 0


def test_records_spread_over_shards_by_request_id() -> None:
    ids = [f"req-{i}" for i in range(3000)]
    spread = Counter(shard_of(i, 4) for i in ids)
    assert set(spread) == {0, 1, 2, 3}
    assert min(spread.values()) > 600  # roughly even
    assert [shard_of(i, 4) for i in ids[:50]] == [shard_of(i, 4) for i in ids[:50]]  # stable


def test_limits_keys_of_an_org_share_a_slot_on_a_cluster() -> None:
    cluster: Redis = RedisCluster(host="127.0.0.1", port=1)
    store = UsageCounters(cluster, prefix="floopy")
    now_ms = 1_790_000_000_000
    policy = parse_policy("100;w=60;s=user")
    keys = [
        store.request_counter("acme", now_ms),
        *store.usage_keys("key-1", now_ms, org_id="acme"),
        bucket_key("floopy", org_tag("acme", True), "org", policy, user_id="u1"),
        bucket_key("floopy", org_tag("acme", True), "key:key-1", policy, user_id="u2"),
    ]
    assert len({slot_of(k) for k in keys}) == 1, keys
    other = store.request_counter("globex", now_ms)
    assert "{acme}" in keys[0] and "{globex}" in other


def test_one_node_keeps_the_old_key_names() -> None:
    store = UsageCounters(Redis(), prefix="floopy")
    now_ms = 1_790_000_000_000
    assert store.request_counter("acme", now_ms).startswith("floopy:usage:org:acme:req:")
    day, _ = store.usage_keys("key-1", now_ms, org_id="acme")
    assert day.startswith("floopy:usage:key:key-1:d:")
