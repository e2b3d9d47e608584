"""The app in-process (litestar's test client, driven by the official ``openai`` SDK) against
the fake provider, real Redis and Qdrant in local mode: what the cache tests share."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any, cast

import openai
from litestar.di import Provide
from litestar.testing import AsyncTestClient
from pydantic import SecretStr
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.services import Services
from gateway.settings import GatewaySettings, ProviderSettings
from shared.codec import decode_record, decode_records
from shared.records import RequestRecord, SpanRecord
from shared.settings import RedisSettings
from shared.streams import RECORD_FIELD, Sink, stream_key

__all__ = [
    "KEY_A",
    "KEY_B",
    "KEY_C",
    "KEY_OFF",
    "KEY_OPS",
    "records",
    "runtime",
    "sdk",
    "settings_for",
    "settle",
    "spans",
]

KEY_A = "sk-floopy-cache-a"
KEY_B = "sk-floopy-cache-b"
KEY_OFF = "sk-floopy-cache-off"
KEY_C = "sk-floopy-cache-c"
KEY_OPS = "sk-floopy-cache-ops"


def settings_for(
    redis_url: str,
    base_url: str,
    root: Path,
    tiers_b: tuple[str, ...] = ("exact", "semantic", "advanced"),
    **extra: Any,
) -> GatewaySettings:
    """Orgs a and b (every tier on), c (exact and advanced only) and a key of org a with its
    cache switch off; the config seed is written under ``root``."""
    tiers = {"tiers": ["exact", "semantic", "advanced"]}
    config = {
        "orgs": {
            "org-a": {"name": "A", "cache": tiers},
            "org-b": {"name": "B", "cache": {"tiers": list(tiers_b)}},
            "org-c": {"name": "C", "cache": {"tiers": ["exact", "advanced"]}},
            "org-ops": {"name": "Operators"},
        },
        "keys": {
            "key-a": {"org": "org-a", "secret": KEY_A, "permissions": ["proxy", "read", "admin"]},
            "key-b": {"org": "org-b", "secret": KEY_B},
            "key-c": {"org": "org-c", "secret": KEY_C},
            "key-off": {"org": "org-a", "secret": KEY_OFF, "switches": {"cache": False}},
            "key-ops": {"org": "org-ops", "secret": KEY_OPS, "permissions": ["admin"]},
        },
    }
    config_file = root / "floopy.json"
    config_file.write_text(json.dumps(config))
    return GatewaySettings(
        redis=RedisSettings(url=redis_url, key_prefix=f"t{uuid.uuid4().hex[:10]}"),
        provider=ProviderSettings(base_url=base_url, api_key=SecretStr("sk-up"), timeout_s=2),
        config_file=config_file,
        operator_orgs=["org-ops"],  # its key reads /health's counters
        **extra,
    )


def sdk(client: AsyncTestClient[Any], key: str = KEY_A) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=key,
        base_url=f"{client.base_url}/v1",
        # openai types it as httpx2's client; it takes httpx's (the test client is one) too
        http_client=client,  # type: ignore[arg-type]
        max_retries=0,
    )


class GatewayClient(AsyncTestClient[Any]):
    """A test client of the whole gateway app (``create_app``), which keeps the app at hand to
    reach its services."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.gateway = create_app(settings)
        super().__init__(app=self.gateway)


def runtime(client: GatewayClient) -> Services:
    """The app's services, as its ``services`` dependency hands them out. They live on the test
    client's own event loop (another thread): read their counters, never await their clients
    from the test."""
    provide = cast(Provide, client.gateway.litestar.dependencies["services"])
    services: Services = provide.dependency()
    return services


async def settle(client: GatewayClient) -> None:
    """Wait until the cache writes scheduled by the requests so far are done."""
    cache = runtime(client).cache
    async with asyncio.timeout(5):
        while cache.stats()["writes_pending"]:  # noqa: ASYNC110 - the app's loop is another
            await asyncio.sleep(0.005)


async def records(settings: GatewaySettings, count: int) -> list[RequestRecord]:
    redis = Redis.from_url(settings.redis.url)
    key = stream_key(Sink.REQUESTS, settings.redis.key_prefix)
    try:
        async with asyncio.timeout(10):
            while await redis.xlen(key) < count:  # noqa: ASYNC110 - polling the publisher's writes
                await asyncio.sleep(0.02)
        entries = await redis.xrange(key)
    finally:
        await redis.aclose()
    return [decode_record(Sink.REQUESTS, fields[RECORD_FIELD]) for _, fields in entries]


async def spans(settings: GatewaySettings, request_id: str) -> list[SpanRecord]:
    redis = Redis.from_url(settings.redis.url)
    try:
        entries = await redis.xrange(stream_key(Sink.SPANS, settings.redis.key_prefix))
    finally:
        await redis.aclose()
    found = [
        s
        for _, f in entries
        for s in cast(list[SpanRecord], decode_records(Sink.SPANS, f[RECORD_FIELD]))
    ]
    return [s for s in found if s.request_id == request_id]
