"""Everything a worker needs to reach providers, built from settings at start-up: the adapters,
the routing table, the circuit breakers and the price book.

Invariants: a configuration that cannot route (duplicate or unknown provider names, a rule
without targets) fails at start-up, not on the first request; adapters are opened on the
worker's loop and closed at shutdown, each even if another failed to close.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from gateway.clients.breaker_store import BreakerStore
from gateway.clients.breakers import Breakers
from gateway.clients.providers.base import ProviderClient
from gateway.clients.providers.registry import make_provider
from gateway.policy.breaker import BreakerConfig
from gateway.policy.prices import ModelPrice, PriceBook
from gateway.policy.routing import ProviderModels, RoutingTable
from gateway.settings import GatewaySettings
from shared.records import BreakerEventRecord

__all__ = ["Upstreams", "routing_table"]

log = logging.getLogger(__name__)


def routing_table(settings: GatewaySettings) -> RoutingTable:
    return RoutingTable(
        [
            ProviderModels(p.name, frozenset(p.models), tuple(p.model_prefixes), frozenset(p.orgs))
            for p in settings.provider_list()
        ],
        settings.routes,
    )


def price_book(settings: GatewaySettings) -> PriceBook:
    return PriceBook({k: ModelPrice(**v.model_dump()) for k, v in settings.prices.items()})


@dataclass
class Upstreams:
    providers: dict[str, ProviderClient]
    routing: RoutingTable
    breakers: Breakers
    prices: PriceBook

    @classmethod
    async def open(
        cls,
        settings: GatewaySettings,
        redis: Redis,
        emit: Callable[[BreakerEventRecord], object],
    ) -> Upstreams:
        routing = routing_table(settings)
        b = settings.breaker
        store = BreakerStore(
            redis,
            BreakerConfig(
                b.failure_threshold, b.window_s, b.cooldown_s, b.probe_timeout_s, b.min_orgs
            ),
            prefix=settings.redis.key_prefix,
        )
        providers = {p.name: make_provider(p) for p in settings.provider_list()}
        for provider in providers.values():
            await provider.open()
        return cls(providers, routing, Breakers(store, emit), price_book(settings))

    async def aclose(self) -> None:
        for name, provider in self.providers.items():
            try:
                await provider.aclose()
            except Exception:  # shutting down: close the others all the same
                log.exception("provider %s did not close cleanly", name)
