"""Everything a worker needs to reach providers, built from settings at start-up: the adapters,
the routing table, the circuit breakers and the price book.

Invariants: a configuration that cannot route (duplicate or unknown provider names, a rule
without targets) fails at start-up, not on the first request; adapters are opened on the
worker's loop and closed at shutdown, each even if another failed to close. ``rebuilt`` makes
the next generation when stored providers or routes change: an adapter whose settings did not
change is carried over (its connections stay warm), the others are new, and the caller retires
the ones left behind once requests still using them are done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis

from gateway.clients.breaker_store import BreakerStore
from gateway.clients.breakers import Breakers
from gateway.clients.providers.base import ProviderClient
from gateway.clients.providers.registry import make_provider
from gateway.metrics import access_counters
from gateway.policy.breaker import BreakerConfig
from gateway.policy.prices import ModelPrice, PriceBook
from gateway.policy.routing import ProviderModels, RoutingTable
from gateway.settings import GatewaySettings, ProviderSettings
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
    return PriceBook(
        {k: ModelPrice(**v.model_dump()) for k, v in settings.prices.items()},
        counters=access_counters("prices", "unknown_models"),
    )


@dataclass
class Upstreams:
    providers: dict[str, ProviderClient]
    routing: RoutingTable
    breakers: Breakers
    prices: PriceBook
    built_from: dict[str, ProviderSettings] = field(default_factory=dict)
    """The settings each adapter was made from (what ``rebuilt`` compares)."""

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
        built_from = {p.name: p for p in settings.provider_list()}
        return cls(providers, routing, Breakers(store, emit), price_book(settings), built_from)

    async def rebuilt(self, settings: GatewaySettings) -> tuple[Upstreams, list[ProviderClient]]:
        """The generation for ``settings`` (same breakers) and the adapters it no longer uses.
        Raises (and opens nothing new) if ``settings`` cannot route."""
        routing = routing_table(settings)
        wanted = {p.name: p for p in settings.provider_list()}
        providers: dict[str, ProviderClient] = {}
        opened: list[ProviderClient] = []
        try:
            for name, config in wanted.items():
                if self.built_from.get(name) == config:
                    providers[name] = self.providers[name]
                    continue
                provider = make_provider(config)
                await provider.open()
                opened.append(provider)
                providers[name] = provider
        except BaseException:
            await _close_all(opened)
            raise
        kept = {id(p) for p in providers.values()}
        retired = [p for p in self.providers.values() if id(p) not in kept]
        nxt = Upstreams(providers, routing, self.breakers, price_book(settings), wanted)
        return nxt, retired

    async def aclose(self) -> None:
        await _close_all(list(self.providers.values()))


async def _close_all(providers: list[ProviderClient]) -> None:
    for provider in providers:
        try:
            await provider.aclose()
        except Exception:  # closing: close the others all the same
            log.exception("provider %s did not close cleanly", provider.name)
