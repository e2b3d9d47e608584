"""The exact tier end to end in-process: the official SDK, the fake provider (its request count
tells a hit from a call), real Redis; records read back from the stream."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from redis.asyncio import Redis

from devstack.fake_openai import REPLY_TEXT, FakeOpenAIThread
from devstack.servers import RedisServer, free_port
from gateway.clients.exact_cache import ExactCache
from gateway.clients.ratelimiter import RateLimiter
from gateway.settings import GatewaySettings
from tests.integration.cache.harness import (
    KEY_A,
    KEY_B,
    KEY_OFF,
    KEY_OPS,
    GatewayClient,
    records,
    runtime,
    sdk,
    settings_for,
    settle,
    spans,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MESSAGES: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]


async def _ask(
    client: GatewayClient,
    key: str = KEY_A,
    headers: dict[str, str] | None = None,
    **body: Any,
) -> Any:
    """One chat completion through the SDK; waits for its cache write, returns the raw reply."""
    params = {"model": "gpt-4o-mini", "messages": MESSAGES, **body}
    raw = await sdk(client, key).chat.completions.with_raw_response.create(
        **params, extra_headers=headers or {}
    )
    await settle(client)
    return raw


async def test_identical_request_is_an_exact_hit(
    client: GatewayClient, settings: GatewaySettings, fake: FakeOpenAIThread
) -> None:
    first = await _ask(client)
    second = await _ask(client)
    assert first.headers["floopy-cache"] == "MISS"
    assert second.headers["floopy-cache"] == "HIT"
    assert second.headers["floopy-cache-tier"] == "exact"
    assert "floopy-cache-similarity" not in second.headers
    assert fake.served["chat"] == 1
    assert second.parse().choices[0].message.content == REPLY_TEXT
    assert second.parse().id == first.parse().id  # the stored completion, id included
    miss, hit = await records(settings, 2)
    assert (miss.cache_status, miss.cache_tier, hit.cache_status, hit.cache_tier) == (
        "miss",
        "",
        "hit",
        "exact",
    )
    assert hit.cache_key_hash == miss.cache_key_hash and len(hit.cache_key_hash) == 64
    assert "exact" in hit.cache_lookup_ms and hit.cache_error == ""
    assert miss.cost_usd is not None and miss.cost_usd > 0
    assert hit.cost_usd == 0.0 and hit.cost_saved_usd == miss.cost_usd
    assert hit.prompt_tokens == miss.prompt_tokens > 0
    assert hit.completion_tokens == miss.completion_tokens > 0
    assert hit.provider == "" and hit.model_used == miss.model_used
    assert "dispatch" not in hit.stage_latency_ms and "cache" in hit.stage_latency_ms
    names = {s.name: s for s in await spans(settings, hit.request_id)}
    assert {"cache", "cache.exact"} <= set(names) and "routing" not in names
    assert names["cache.exact"].attributes["result"] == "hit"


async def test_the_exact_entry_comes_with_the_limits_script(
    client: GatewayClient, settings: GatewaySettings, fake: FakeOpenAIThread
) -> None:
    """One round trip to Redis before the provider call: the limits script reads the entry (the
    lookup's span says so), for a miss and for a hit."""
    answers = [await _ask(client) for _ in range(2)]
    assert [a.headers["floopy-cache"] for a in answers] == ["MISS", "HIT"]
    assert fake.served["chat"] == 1
    for record in await records(settings, 2):
        names = {s.name: s for s in await spans(settings, record.request_id)}
        assert names["cache.exact"].attributes["read_by"] == "rate_limit"
        assert names["cache.exact"].attributes["result"] == record.cache_status


async def test_concurrent_misses_are_all_stored(
    redis_server: RedisServer, fake: FakeOpenAIThread, tmp_path: Path
) -> None:
    """An org of the exact tier alone: misses written concurrently all land."""
    settings = settings_for(redis_server.url, fake.base_url, tmp_path, tiers_b=("exact",))
    async with GatewayClient(settings) as client:

        def ask(i: int) -> Any:
            messages: list[ChatCompletionMessageParam] = [
                {"role": "user", "content": f"question {i}"}
            ]
            return sdk(client, KEY_B).chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=messages
            )

        first = await asyncio.gather(*(ask(i) for i in range(6)))
        await settle(client)
        again = await asyncio.gather(*(ask(i) for i in range(6)))
        stats = runtime(client).cache.stats()
    assert [r.headers["floopy-cache"] for r in first] == ["MISS"] * 6
    assert [r.headers["floopy-cache"] for r in again] == ["HIT"] * 6
    assert fake.served["chat"] == 6
    assert stats["writes"] == 6 and stats["writes_pending"] == 0 and not stats["write_failures"]


async def test_streamed_hit_replays_what_the_sdk_assembles(
    client: GatewayClient, settings: GatewaySettings, fake: FakeOpenAIThread
) -> None:
    async def streamed(**extra: Any) -> tuple[str, list[Any], httpx.Headers]:
        response = await sdk(client).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, **extra
        )
        chunks = [c async for c in response.parse()]
        await settle(client)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks, response.headers

    text, _, headers = await streamed()
    assert headers["floopy-cache"] == "MISS" and text == REPLY_TEXT
    replayed, chunks, headers = await streamed(stream_options={"include_usage": True})
    assert headers["floopy-cache"] == "HIT" and replayed == REPLY_TEXT
    assert fake.served["chat"] == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert chunks[-2].choices[0].finish_reason == "stop"
    # stream-independent: the non-streamed request is the same request
    whole = await _ask(client)
    assert whole.headers["floopy-cache"] == "HIT" and fake.served["chat"] == 1
    assert whole.parse().choices[0].message.content == REPLY_TEXT
    _, hit, _ = await records(settings, 3)
    assert hit.stream and hit.cache_status == "hit" and REPLY_TEXT in hit.response_body
    assert hit.completion_tokens > 0 and hit.cost_usd == 0.0


async def test_a_cut_stream_is_never_stored(
    redis_server: RedisServer, fake: FakeOpenAIThread, tmp_path: Path
) -> None:
    settings = settings_for(redis_server.url, fake.base_url, tmp_path)
    settings.provider.timeout_s = 0.3  # fake-stall sends one chunk, then nothing
    async with GatewayClient(settings) as client:
        for _ in range(2):
            stream = await sdk(client).chat.completions.create(
                model="fake-stall", messages=MESSAGES, stream=True
            )
            parts = [c async for c in stream]  # ends early: the relay stops at the cut
            assert len(parts) < 3
            await settle(client)
        assert fake.served["chat"] == 2
        assert runtime(client).cache.writes == 0
    first, second = await records(settings, 2)
    assert first.cache_status == second.cache_status == "miss"
    assert "stream cut" in first.error_message


@pytest.mark.parametrize(
    ("change", "headers"),
    [
        ({"model": "gpt-4o"}, {}),
        ({"temperature": 0.2}, {}),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, {}),
        ({}, {"Floopy-Cache-Seed": "other"}),
        ({"messages": [{"role": "user", "content": "What is the capital of Spain?"}]}, {}),
    ],
)
async def test_any_change_is_a_miss(
    client: GatewayClient,
    fake: FakeOpenAIThread,
    change: dict[str, Any],
    headers: dict[str, str],
) -> None:
    await _ask(client, headers={"Floopy-Cache-Seed": "s1"})
    again = await _ask(client, headers={"Floopy-Cache-Seed": "s1"})
    assert again.headers["floopy-cache"] == "HIT"
    changed = await _ask(client, headers={"Floopy-Cache-Seed": "s1", **headers}, **change)
    assert changed.headers["floopy-cache"] == "MISS"
    assert fake.served["chat"] == 2


async def test_integral_floats_and_key_order_are_the_same_request(
    client: GatewayClient, fake: FakeOpenAIThread
) -> None:
    await _ask(client, temperature=1.0, top_p=1)
    again = await _ask(client, top_p=1.0, temperature=1)
    assert again.headers["floopy-cache"] == "HIT" and fake.served["chat"] == 1


async def test_orgs_never_share_an_entry(
    client: GatewayClient, settings: GatewaySettings, fake: FakeOpenAIThread
) -> None:
    await _ask(client, KEY_A)
    other = await _ask(client, KEY_B)
    assert other.headers["floopy-cache"] == "MISS"
    assert fake.served["chat"] == 2
    a, b = await records(settings, 2)
    assert a.cache_key_hash != b.cache_key_hash


async def test_bypass_header_and_key_switch_neither_read_nor_write(
    client: GatewayClient, settings: GatewaySettings, fake: FakeOpenAIThread
) -> None:
    bypass = {"Floopy-Cache-Enabled": "false"}
    first = await _ask(client, headers=bypass)
    assert first.headers["floopy-cache"] == "BYPASS"
    off = await _ask(client, KEY_OFF)
    assert off.headers["floopy-cache"] == "DISABLED"
    redis = Redis.from_url(settings.redis.url)
    try:
        assert await redis.keys(f"{settings.redis.key_prefix}:cache:*") == []
    finally:
        await redis.aclose()
    stored = await _ask(client)
    assert stored.headers["floopy-cache"] == "MISS"
    assert (await _ask(client, headers=bypass)).headers["floopy-cache"] == "BYPASS"
    assert (await _ask(client, KEY_OFF)).headers["floopy-cache"] == "DISABLED"
    assert fake.served["chat"] == 5
    statuses = [r.cache_status for r in await records(settings, 5)]
    assert statuses == ["bypass", "disabled", "miss", "bypass", "disabled"]


async def test_max_age_older_than_the_entry_is_a_miss(
    client: GatewayClient, settings: GatewaySettings, fake: FakeOpenAIThread
) -> None:
    await _ask(client)
    young = await _ask(client, headers={"Floopy-Cache-Max-Age": "3600"})
    assert young.headers["floopy-cache"] == "HIT"
    redis = Redis.from_url(settings.redis.url)
    try:
        [key] = await redis.keys(f"{settings.redis.key_prefix}:cache:*")
        assert await redis.ttl(key) > 3600  # the miss stored the org's 7 days; a hit writes not
        await _age_entries(redis, settings.redis.key_prefix, 5_000)
        old = await _ask(client, headers={"Floopy-Cache-Max-Age": "2"})
        assert old.headers["floopy-cache"] == "MISS"
        assert 0 < await redis.ttl(key) <= 2  # what it stored lives as long as the header said
    finally:
        await redis.aclose()
    assert fake.served["chat"] == 2


async def _age_entries(redis: Redis, prefix: str, by_ms: int) -> None:
    """Make every stored exact entry ``by_ms`` older (instead of sleeping)."""
    from gateway.policy.cache import decode_answer, encode_answer

    for key in await redis.keys(f"{prefix}:cache:*"):
        answer = decode_answer(await redis.get(key))
        assert answer is not None
        answer.created_at_ms -= by_ms
        await redis.set(key, encode_answer(answer), keepttl=True)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Floopy-Cache-Max-Age", "soon"),
        ("Floopy-Cache-Max-Age", "0"),
        ("Floopy-Cache-Semantic-Threshold", "1.5"),
        ("Floopy-Cache-Semantic-Threshold", "nan"),
        ("floopy-cache-enabled", "maybe"),
        ("FLOOPY-CACHE-SEED", "x" * 300),
    ],
)
async def test_bad_cache_headers_are_a_400_naming_the_header(
    client: GatewayClient, header: str, value: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await _ask(client, headers={header: value})
    error = raised.value.body
    assert isinstance(error, dict) and header.lower() in error["message"].lower()
    assert error["code"] == "BAD_REQUEST"


async def test_redis_down_fails_open_to_the_provider(
    client: GatewayClient, settings: GatewaySettings, fake: FakeOpenAIThread
) -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    runtime(client).cache.exact = ExactCache(dead, settings.redis.key_prefix)
    # the limits script reads the exact entry in its round trip when Redis answers it: down
    # is down for both (the limits fail open too, and the cache stage looks up on its own).
    # The limits stage was handed this limiter at start-up: it is pointed at the dead Redis
    # in place (its counters and Redis's cooldown, shared with the cache, kept).
    limiter = runtime(client).access.limiter
    assert limiter.redis_cooldown is runtime(client).cache.redis_cooldown, "one per Redis"
    kept = {"counters", "redis_cooldown"}
    vars(limiter).update({k: v for k, v in vars(RateLimiter(dead)).items() if k not in kept})
    try:
        answers = [await _ask(client) for _ in range(2)]
    finally:
        await dead.aclose()
    assert [a.headers["floopy-cache"] for a in answers] == ["MISS", "MISS"]
    assert fake.served["chat"] == 2
    stats = runtime(client).cache.stats()
    assert stats["fail_open"] == {"exact": 2} and stats["write_failures"] == {"exact": 2}
    records_ = await records(settings, 2)
    assert all(r.cache_status == "miss" for r in records_)
    # the limits found Redis down first: the cache, sharing its cooldown, did not try again
    assert (limiter.fail_open_count, limiter.cooldown_count) == (2, 1)
    assert all(
        "exact: RedisError: Redis failed less than a second ago" in r.cache_error for r in records_
    )
    health = (await client.get("/health", headers={"Authorization": f"Bearer {KEY_OPS}"})).json()
    assert health["cache"]["fail_open"] == {"exact": 2}
