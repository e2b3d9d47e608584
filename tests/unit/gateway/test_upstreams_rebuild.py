"""The next generation of providers when stored routing changes: unchanged adapters carried
over (warm connections), changed and removed ones handed back to be retired, breakers shared,
and a configuration that cannot route refused without opening anything."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from gateway.clients.upstreams import Upstreams
from gateway.settings import GatewaySettings, ProviderSettings


async def test_rebuilt_carries_unchanged_adapters_and_retires_the_rest() -> None:
    a = ProviderSettings(name="a", base_url="http://a/v1")
    b = ProviderSettings(name="b", base_url="http://b/v1")
    settings = GatewaySettings(providers=[a, b])
    redis = Redis.from_url("redis://127.0.0.1:1")  # never reached: nothing here calls Redis
    current = await Upstreams.open(settings, redis, lambda _: None)
    changed = settings.model_copy(
        update={
            "providers": [a, b.model_copy(update={"base_url": "http://b2/v1"})],
            "routes": {"m": ["b", "a"]},
        }
    )
    nxt, retired = await current.rebuilt(changed)
    try:
        assert nxt.providers["a"] is current.providers["a"]
        assert nxt.providers["b"] is not current.providers["b"]
        assert retired == [current.providers["b"]]
        assert nxt.breakers is current.breakers
        assert [t.provider for t in nxt.routing.targets("m")] == ["b", "a"]

        same, none = await nxt.rebuilt(changed)
        assert none == [] and same.providers == nxt.providers

        unroutable = changed.model_copy(update={"routes": {"m": ["nowhere"]}})
        with pytest.raises(ValueError, match="unknown provider"):
            await nxt.rebuilt(unroutable)
    finally:
        await nxt.aclose()
        for provider in retired:
            await provider.aclose()
        await redis.aclose()
