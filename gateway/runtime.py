"""What one gateway worker holds for its lifetime: settings, Redis, the publisher, providers,
the embedder and the vector store.

Invariants: built on the worker's event loop at start-up (``Runtime.open``), never at import;
closed at shutdown in reverse order (publisher flush first, while Redis is still open).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from gateway.clients.embeddings import Embedder, ProviderEmbedder, open_embedder
from gateway.clients.exact_cache import ExactCache
from gateway.clients.model_catalog import ModelCatalog
from gateway.clients.outage_spool import OutageSpool
from gateway.clients.publisher import Publisher
from gateway.clients.response_cache import ResponseCache
from gateway.clients.semantic_cache import SemanticCache
from gateway.clients.upstreams import Upstreams
from gateway.clients.vector_store import VectorStore
from gateway.clients.verdict_cache import VerdictCache
from gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from gateway.access import Access
    from gateway.routing_watch import RoutingWatcher
from shared.codec import encode_record
from shared.streams import Sink

__all__ = ["Counters", "Runtime"]

log = logging.getLogger(__name__)

_DRAIN_S = 5.0


@dataclass
class Counters:
    """Failures that were logged and survived, shown at ``GET /health``."""

    unexpected_errors: int = 0
    record_build_failures: int = 0
    refused_in_flight: int = 0
    """Requests refused by the guard because their client had too many in flight."""
    records_after_failed_response: int = 0
    """Records published by the guard because building or sending the response failed."""
    firewall_classifier_failures: int = 0
    firewall_cache_errors: int = 0


@dataclass
class Runtime:
    settings: GatewaySettings
    redis: Redis
    publisher: Publisher
    upstreams: Upstreams
    counters: Counters = field(default_factory=Counters)
    embedder: Embedder = field(init=False)
    vectors: VectorStore = field(init=False)
    cache: ResponseCache = field(init=False)
    """The response cache's stores (exact in Redis, semantic and advanced in ``vectors``)."""
    catalog: ModelCatalog = field(init=False)
    """``GET /v1/models``."""
    verdict_cache: VerdictCache = field(init=False)
    """The firewall's verdicts (``gateway.clients.verdict_cache``)."""
    in_flight: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Requests in flight per client (``gateway.guard``)."""
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    """Work a request left behind (records waiting for a token estimate), awaited at close."""
    access: Access = field(init=False)
    """Keys, limits, templates (``gateway.access``); opened by the app's lifespan before this."""
    watcher: RoutingWatcher = field(init=False)
    """Swaps ``upstreams`` and ``settings`` when stored providers or routes change."""

    @classmethod
    async def open(cls, settings: GatewaySettings, spool: OutageSpool | None = None) -> Runtime:
        redis = Redis.from_url(
            settings.redis.url,
            socket_timeout=settings.redis.socket_timeout_s,
            socket_connect_timeout=settings.redis.connect_timeout_s,
        )
        publisher = Publisher(
            redis, settings.publisher, prefix=settings.redis.key_prefix, spool=spool
        )
        upstreams = await Upstreams.open(
            settings,
            redis,
            lambda event: publisher.submit(Sink.BREAKER_EVENTS, encode_record(event)),
        )
        rt = cls(settings, redis, publisher, upstreams)
        # read at each call: the routing watcher swaps rt.upstreams and rt.settings
        rt.embedder = (
            await ProviderEmbedder.open(settings.embedder, lambda: rt.upstreams)
            if settings.embedder.kind == "provider"
            else open_embedder(settings.embedder)
        )
        rt.vectors = VectorStore.open(settings.qdrant)
        semantic = SemanticCache(rt.vectors)
        await semantic.open(rt.embedder.dimensions)
        rt.cache = ResponseCache(ExactCache(redis, settings.redis.key_prefix), semantic)
        if rt.vectors.is_local:
            rt.cache.start_pruning()
            if settings.workers > 1:
                log.warning(
                    "Qdrant local mode with %d workers: each worker has its own semantic cache "
                    "(a paraphrase hits only on the worker that stored it); set "
                    "FLOOPY_GATEWAY_QDRANT__URL to share one",
                    settings.workers,
                )
        rt.catalog = ModelCatalog(lambda: (rt.settings, rt.upstreams.providers))
        rt.verdict_cache = VerdictCache(rt.vectors, rt.embedder, settings.firewall.cache_similarity)
        publisher.start()
        return rt

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        await self.cache.close()
        if self.tasks:
            _, late = await asyncio.wait(self.tasks, timeout=_DRAIN_S)
            if late:
                log.error("%d records still waiting for a token estimate at shutdown", len(late))
        await self.publisher.stop()
        await self.upstreams.aclose()
        await self.vectors.aclose()
        await self.embedder.aclose()
        await self.redis.aclose()
