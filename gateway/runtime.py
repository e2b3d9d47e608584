"""What one gateway worker holds for its lifetime: settings, Redis, the publisher, providers.

Invariants: built on the worker's event loop at start-up (``Runtime.open``), never at import;
closed at shutdown in reverse order (publisher flush first, while Redis is still open).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from gateway.clients.providers.base import ProviderClient
from gateway.clients.providers.openai import OpenAIProvider
from gateway.clients.publisher import Publisher
from gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from gateway.access import Access

__all__ = ["Counters", "Runtime"]


@dataclass
class Counters:
    """Failures that were logged and survived, shown at ``GET /health``."""

    unexpected_errors: int = 0
    record_build_failures: int = 0


@dataclass
class Runtime:
    settings: GatewaySettings
    redis: Redis
    publisher: Publisher
    providers: dict[str, ProviderClient]
    counters: Counters = field(default_factory=Counters)
    access: Access = field(init=False)
    """Keys, limits, templates (``gateway.access``); opened by the app's lifespan before this."""

    @classmethod
    async def open(cls, settings: GatewaySettings) -> Runtime:
        redis = Redis.from_url(
            settings.redis.url,
            socket_timeout=settings.redis.socket_timeout_s,
            socket_connect_timeout=settings.redis.connect_timeout_s,
        )
        publisher = Publisher(redis, settings.publisher, prefix=settings.redis.key_prefix)
        provider = OpenAIProvider(settings.provider)
        await provider.open()
        publisher.start()
        return cls(settings, redis, publisher, {provider.name: provider})

    async def close(self) -> None:
        await self.publisher.stop()
        for provider in self.providers.values():
            await provider.aclose()
        await self.redis.aclose()
