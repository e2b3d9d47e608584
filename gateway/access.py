"""What the access stages (auth, limits, template) and the admin API hold per worker: the key
store, the rate limiter, the usage recorder, the template and routing-config stores.

Invariants: opened in the worker's lifespan before the ``Runtime`` (whose providers and routes
it completes from the store), closed after it. Its own Redis connection pool, so a backlog of
published records never queues in front of a rate-limit decision. At start-up the deprecated
static key table and then the config file are applied (idempotent); a bad config file stops the
worker, an unreachable Redis is logged and the worker serves what Redis already holds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.admin.seed import apply_seed, load_seed, merge_routing, seed_from_api_keys
from gateway.clients.audit_log import AuditLog
from gateway.clients.keystore import KeyStore
from gateway.clients.outage_spool import OutageSpool
from gateway.clients.ratelimiter import RateLimiter
from gateway.clients.routing_config import RoutingConfigStore
from gateway.clients.templates import TemplateStore
from gateway.clients.usage import UsageRecorder
from gateway.settings import GatewaySettings

__all__ = ["Access"]

log = logging.getLogger(__name__)


@dataclass
class Access:
    redis: Redis
    keystore: KeyStore
    limiter: RateLimiter
    templates: TemplateStore
    routing: RoutingConfigStore
    usage: UsageRecorder
    audit: AuditLog
    seed_failures: int = 0

    @classmethod
    def build(cls, settings: GatewaySettings, spool: OutageSpool | None = None) -> Access:
        redis = Redis.from_url(
            settings.redis.url,
            socket_timeout=settings.redis.socket_timeout_s,
            socket_connect_timeout=settings.redis.connect_timeout_s,
        )
        prefix, ttl = settings.redis.key_prefix, settings.key_cache_ttl_s
        keystore = KeyStore(redis, prefix=prefix, cache_ttl_s=ttl)
        limiter = RateLimiter(redis)
        return cls(
            redis=redis,
            keystore=keystore,
            limiter=limiter,
            templates=TemplateStore(redis, prefix=prefix, cache_ttl_s=ttl),
            routing=RoutingConfigStore(redis, prefix=prefix),
            usage=UsageRecorder(redis, keystore, limiter, spool=spool),
            audit=AuditLog(redis, prefix=prefix),
        )

    @classmethod
    async def open(
        cls,
        settings: GatewaySettings,
        environ: Mapping[str, str],
        spool: OutageSpool | None = None,
    ) -> Access:
        access = cls.build(settings, spool)
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
                    keystore=self.keystore,
                    templates=self.templates,
                    routing=self.routing,
                    environ=environ,
                    keep_orgs=keep_orgs,
                )
            except (RedisError, OSError) as exc:
                self.seed_failures += 1
                log.error("could not apply the config seed (%s: %s)", type(exc).__name__, exc)

    async def routing_version(self) -> int:
        """The stored routing version now (-1 if Redis cannot say: the watcher reloads then)."""
        try:
            return await self.routing.version()
        except (RedisError, OSError) as exc:
            log.warning("stored routing version unavailable (%s)", exc)
            return -1

    async def merged_settings(self, settings: GatewaySettings) -> GatewaySettings:
        try:
            providers = await self.routing.providers()
            routes = await self.routing.routes()
        except (RedisError, OSError) as exc:
            self.seed_failures += 1
            log.error("stored providers/routes unavailable (%s); using settings only", exc)
            return settings
        return merge_routing(settings, providers, routes)

    def stats(self) -> dict[str, object]:
        return {
            "key_cache": {
                "hits": self.keystore.cache_hits,
                "misses": self.keystore.cache_misses,
                "stale_answers": self.keystore.stale_answers,
            },
            "rate_limit_fail_open": self.limiter.fail_open_count,
            "usage": self.usage.stats(),
            "seed_failures": self.seed_failures,
        }

    async def close(self) -> None:
        await self.usage.stop()
        await self.redis.aclose()
