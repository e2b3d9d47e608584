"""What the access stages (auth, limits, template) and the admin API hold per worker: the key
stores by reader (the authenticator, the usage counters, the admin store), the rate limiter, the
usage recorder, the template and routing-config stores.

Invariants: opened first in the worker's lifespan (``gateway.services``: the providers and
routes of every other service are completed from its store), closed last. Its own Redis
connection pool, so a backlog of published records never queues in front of a rate-limit
decision. At start-up the deprecated
static key table and then the config file are applied (idempotent); a bad config file stops the
worker, an unreachable Redis is logged and the worker serves what Redis already holds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.admin.seed import apply_seed, load_seed, seed_from_api_keys
from gateway.clients.admin_store import AdminStore
from gateway.clients.audit_log import AuditLog
from gateway.clients.cooldown import Cooldown
from gateway.clients.key_auth import KeyAuthenticator
from gateway.clients.outage_spool import OutageSpool
from gateway.clients.ratelimiter import RateLimiter
from gateway.clients.routing_config import RoutingConfigStore
from gateway.clients.templates import TemplateStore
from gateway.clients.usage import UsageRecorder
from gateway.clients.usage_counters import UsageCounters
from gateway.metrics import access_counters
from gateway.routing_checks import merge_routing
from gateway.settings import GatewaySettings
from shared.metrics import CounterSet
from shared.redis_client import open_redis

__all__ = ["Access"]

log = logging.getLogger(__name__)


@dataclass
class Access:
    redis: Redis
    authenticator: KeyAuthenticator
    usage_counters: UsageCounters
    admin_store: AdminStore
    limiter: RateLimiter
    templates: TemplateStore
    routing_config: RoutingConfigStore
    """The stored providers and routes (not the routing table: ``Upstreams.routing``)."""
    usage: UsageRecorder
    audit: AuditLog
    counters: CounterSet = field(default_factory=lambda: access_counters("seed", "failures"))

    @property
    def seed_failures(self) -> int:
        return self.counters.get("failures")

    @classmethod
    def build(
        cls,
        settings: GatewaySettings,
        spool: OutageSpool | None = None,
        redis_cooldown: Cooldown | None = None,
    ) -> Access:
        """``redis_cooldown``: Redis's, shared with the exact cache (``open_services``)."""
        redis = open_redis(settings.redis)
        prefix, ttl = settings.redis.key_prefix, settings.key_cache_ttl_s
        authenticator = KeyAuthenticator(redis, prefix=prefix, cache_ttl_s=ttl)
        usage_counters = UsageCounters(redis, prefix=prefix)
        limiter = RateLimiter(redis, cooldown=redis_cooldown)
        return cls(
            redis=redis,
            authenticator=authenticator,
            usage_counters=usage_counters,
            admin_store=AdminStore(redis, prefix=prefix, authenticator=authenticator),
            limiter=limiter,
            templates=TemplateStore(redis, prefix=prefix, cache_ttl_s=ttl),
            routing_config=RoutingConfigStore(redis, prefix=prefix),
            usage=UsageRecorder(usage_counters, limiter, spool=spool),
            audit=AuditLog(redis, prefix=prefix),
        )

    @classmethod
    async def open(
        cls,
        settings: GatewaySettings,
        environ: Mapping[str, str],
        spool: OutageSpool | None = None,
        redis_cooldown: Cooldown | None = None,
    ) -> Access:
        access = cls.build(settings, spool, redis_cooldown)
        await access.seed(settings, environ)
        access.usage.start()
        return access

    async def seed(self, settings: GatewaySettings, environ: Mapping[str, str]) -> None:
        seeds = []
        if settings.api_keys:
            seeds.append((seed_from_api_keys(settings.api_keys), True))
        if settings.config_file is not None:
            seeds.append((load_seed(settings.config_file), False))  # bad file: raise, stop
        for seed, keep_orgs in seeds:
            try:
                await apply_seed(
                    seed,
                    admin_store=self.admin_store,
                    templates=self.templates,
                    routing_config=self.routing_config,
                    environ=environ,
                    keep_orgs=keep_orgs,
                )
            except (RedisError, OSError) as exc:
                self.counters.inc("failures")
                log.error("could not apply the config seed (%s: %s)", type(exc).__name__, exc)

    async def routing_version(self) -> int:
        """The stored routing version now (-1 if Redis cannot say: the watcher reloads then)."""
        try:
            return await self.routing_config.version()
        except (RedisError, OSError) as exc:
            log.warning("stored routing version unavailable (%s)", exc)
            return -1

    async def merged_settings(self, settings: GatewaySettings) -> GatewaySettings:
        try:
            providers = await self.routing_config.providers()
            routes = await self.routing_config.routes()
        except (RedisError, OSError) as exc:
            self.counters.inc("failures")
            log.error("stored providers/routes unavailable (%s); using settings only", exc)
            return settings
        return merge_routing(settings, providers, routes)

    def stats(self) -> dict[str, object]:
        return {
            "key_cache": {
                "hits": self.authenticator.cache_hits,
                "misses": self.authenticator.cache_misses,
                "stale_answers": self.authenticator.stale_answers,
            },
            "rate_limit_fail_open": self.limiter.fail_open_count,
            "rate_limit_cooldown": self.limiter.cooldown_count,
            "usage": self.usage.stats(),
            "seed_failures": self.seed_failures,
        }

    async def close(self) -> None:
        await self.usage.stop()
        await self.redis.aclose()
