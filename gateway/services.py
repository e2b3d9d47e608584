"""What one gateway worker holds for its lifetime, opened in one place.

Invariants:
- ``open_services`` is the worker's lifespan: it opens every service on the worker's own event
  loop, in order (outage spool, access stores and the config seed, Redis and the publisher,
  upstreams, embedder, vector store and caches, the routing watcher), and closes them in
  reverse on the way out, also when opening failed part-way (an ``AsyncExitStack``). Nothing is
  built at import, and nothing is attached to ``Services`` after it is made.
- Each stage, route and controller is handed only what it uses (``gateway.app`` wires them);
  ``Services`` itself is read by that wiring only.
- Closing: the routing watcher stops first, then the work requests left behind (records
  waiting for a token estimate) is awaited, then the caches, the upstreams and the publisher
  (its flush, while Redis is still open), and the access stores last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis

from gateway.access import Access
from gateway.clients.cooldown import Cooldown, redis_cooldown
from gateway.clients.embeddings import Embedder, ProviderEmbedder, open_embedder
from gateway.clients.exact_cache import ExactCache
from gateway.clients.model_catalog import ModelCatalog
from gateway.clients.outage_spool import USAGE, OutageSpool
from gateway.clients.publisher import Publisher
from gateway.clients.response_cache import ResponseCache
from gateway.clients.semantic_cache import SemanticCache
from gateway.clients.upstreams import Upstreams
from gateway.clients.vector_store import VectorStore
from gateway.clients.verdict_cache import VerdictCache
from gateway.generation import Generation
from gateway.metrics import error_counters
from gateway.routing_watch import RoutingWatcher
from gateway.settings import GatewaySettings
from shared.codec import encode_record
from shared.metrics import CounterSet, flush_every
from shared.redis_client import open_redis
from shared.streams import Sink

__all__ = ["Background", "Opened", "Services", "open_services"]

log = logging.getLogger(__name__)

_DRAIN_S = 5.0


class Background:
    """Work a request left behind (records waiting for a token estimate), awaited at close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if not self._tasks:
            return
        _, late = await asyncio.wait(self._tasks, timeout=_DRAIN_S)
        if late:
            log.error("%d records still waiting for a token estimate at shutdown", len(late))


@dataclass(frozen=True)
class Services:
    settings: GatewaySettings
    """The worker's own settings (``generation.settings`` has stored routing merged in)."""
    access: Access
    """Keys, limits, templates, stored routing, usage, audit (their own Redis pool)."""
    redis: Redis
    publisher: Publisher
    generation: Generation
    embedder: Embedder
    vectors: VectorStore
    cache: ResponseCache
    """The response cache's stores (exact in Redis, semantic and advanced in ``vectors``)."""
    catalog: ModelCatalog
    """``GET /v1/models``."""
    verdict_cache: VerdictCache
    """The firewall's verdicts (``gateway.clients.verdict_cache``)."""
    watcher: RoutingWatcher
    """Replaces ``generation`` when stored providers or routes change."""
    background: Background
    counters: CounterSet = field(default_factory=error_counters)
    """Failures that were logged and survived (``unexpected``, ``record_build``,
    ``refused_in_flight``: requests the guard refused because their client had too many in
    flight, ``records_after_failed_response``: records the guard published because building or
    sending the response failed, ``firewall_classifier``, ``firewall_verdict_cache``): shown at
    ``GET /health`` and exported at ``/metrics``."""
    in_flight: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Requests in flight per client (``gateway.guard``)."""


@asynccontextmanager
async def open_services(
    settings: GatewaySettings, environ: Mapping[str, str]
) -> AsyncIterator[Services]:
    """``environ``: where the config seed reads ``secret_env`` keys."""
    async with AsyncExitStack() as stack:
        flusher = asyncio.get_running_loop().create_task(flush_every(), name="floopy-metrics")
        stack.push_async_callback(_cancel, flusher)  # last out: its final flush counts shutdown
        spool = _open_spool(settings)
        cooldown = redis_cooldown()  # one per Redis: a timeout one caller saw spares the others
        access = await Access.open(settings, environ, spool, cooldown)
        stack.push_async_callback(access.close)
        version = await access.routing_version()  # before reading: a write in between reloads
        merged = await access.merged_settings(settings)
        redis = open_redis(settings.redis)
        stack.push_async_callback(redis.aclose)
        publisher = Publisher(
            redis,
            settings.publisher,
            prefix=settings.redis.key_prefix,
            spool=spool,
            shards=settings.redis.stream_shards,
        )
        publisher.drains[USAGE] = access.usage.replay
        publisher.start()
        stack.push_async_callback(publisher.stop)
        upstreams = await Upstreams.open(
            merged,
            redis,
            lambda event: publisher.submit(
                Sink.BREAKER_EVENTS, encode_record(event), event.event_id
            ),
        )
        stack.push_async_callback(upstreams.aclose)
        generation = Generation(merged, upstreams)
        embedder = (
            await ProviderEmbedder.open(settings.embedder, lambda: generation.upstreams)
            if settings.embedder.kind == "provider"
            else open_embedder(settings.embedder)
        )
        stack.push_async_callback(embedder.aclose)
        vectors = VectorStore.open(settings.qdrant)
        stack.push_async_callback(vectors.aclose)
        cache = await _open_cache(settings, redis, vectors, embedder, cooldown)
        stack.push_async_callback(cache.close)
        background = Background()
        stack.push_async_callback(background.drain)
        watcher = RoutingWatcher(
            generation,
            access.routing_config,
            settings,
            seen_version=version,
            interval_s=settings.routing_refresh_s,
        )
        watcher.start()
        stack.push_async_callback(watcher.stop)
        yield Services(
            settings=settings,
            access=access,
            redis=redis,
            publisher=publisher,
            generation=generation,
            embedder=embedder,
            vectors=vectors,
            cache=cache,
            catalog=ModelCatalog(lambda: (generation.settings, generation.upstreams.providers)),
            verdict_cache=VerdictCache(vectors, embedder, settings.firewall.cache_similarity),
            watcher=watcher,
            background=background,
        )


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _open_cache(
    settings: GatewaySettings,
    redis: Redis,
    vectors: VectorStore,
    embedder: Embedder,
    cooldown: Cooldown,
) -> ResponseCache:
    semantic = SemanticCache(vectors)
    await semantic.open(embedder.dimensions)
    cache = ResponseCache(ExactCache(redis, settings.redis.key_prefix), semantic, cooldown=cooldown)
    cache.start()
    if vectors.is_local:
        cache.start_pruning()
        if settings.workers > 1:
            log.warning(
                "Qdrant local mode with %d workers: each worker has its own semantic cache "
                "(a paraphrase hits only on the worker that stored it); set "
                "FLOOPY_GATEWAY_QDRANT__URL to share one",
                settings.workers,
            )
    return cache


def _open_spool(settings: GatewaySettings) -> OutageSpool | None:
    if settings.spool.dir is None:
        log.warning(
            "no outage spool (FLOOPY_GATEWAY_SPOOL__DIR): while Redis is down, records and "
            "usage wait in memory only"
        )
        return None
    names = [sink.value for sink in Sink] + [USAGE]
    return OutageSpool.open(settings.spool, names, prefix=settings.redis.key_prefix)


T = TypeVar("T")


class Opened(Generic[T]):
    """What the lifespan opened, for the parts of the app outside Litestar's dependency
    injection: the guard and the proxied endpoints (``gateway.app.GatewayApp``). Set at
    start-up, cleared at shutdown; read before or after that, it raises."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value: T | None = None

    @property
    def value(self) -> T:
        value = self._value
        if value is None:
            raise RuntimeError("the worker's services are not open (outside its lifespan)")
        return value

    def set(self, value: T | None) -> None:
        self._value = value
