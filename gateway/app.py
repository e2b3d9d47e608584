"""The litestar application. ``create_app(settings)`` builds it; nothing is built at import.

Per worker, the lifespan opens the ``Runtime`` (Redis client, publisher task, provider clients)
on the worker's own event loop and closes it at shutdown (publisher flush first).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from litestar import Litestar

from gateway.access import Access
from gateway.admin.api import admin_router
from gateway.clients.outage_spool import USAGE, OutageSpool
from gateway.console import Console, Principal, openapi_config
from gateway.console.auth import reader_keys
from gateway.errors import EXCEPTION_HANDLERS
from gateway.guard import guard_middleware
from gateway.provider_health import provider_health
from gateway.routes import chat_completions, embeddings, health, metrics, models
from gateway.routing_watch import RoutingWatcher
from gateway.runtime import Runtime
from gateway.settings import GatewaySettings
from shared.streams import Sink

__all__ = ["app_factory", "configure_logging", "create_app"]

log = logging.getLogger(__name__)


def create_app(settings: GatewaySettings, environ: Mapping[str, str] | None = None) -> Litestar:
    """``environ``: where the config seed reads ``secret_env`` keys (the process environment when
    served by ``app_factory``)."""
    opened: list[Access] = []

    async def console_authenticate(token: str) -> Principal:
        return await reader_keys(opened[0].authenticator)(token)

    console = Console(
        settings.clickhouse, console_authenticate, pool_size=settings.console_pool_size
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        spool = _open_spool(settings)
        access = await Access.open(settings, environ or {}, spool)
        try:
            version = await access.routing_version()  # before reading: a write in between reloads
            runtime = await Runtime.open(await access.merged_settings(settings), spool)
        except BaseException:
            await access.close()
            raise
        runtime.access = access
        runtime.publisher.drains[USAGE] = access.usage.replay
        runtime.watcher = RoutingWatcher(
            runtime,
            access.routing,
            settings,
            seen_version=version,
            interval_s=settings.routing_refresh_s,
        )
        runtime.watcher.start()
        opened[:] = [access]
        app.state.runtime = runtime
        # What start-up built lives as long as the worker: move it out of the collector's way,
        # so a full collection scans what requests leave behind, not ~100 MB of modules and
        # clients (measured: a 64 ms stall per full collection otherwise). A request leaves few
        # cycles, so young collections every 20,000 allocations rather than 700 (~5% of CPU).
        gc.freeze()
        gc.set_threshold(20_000, 20, 100)
        try:
            yield
        finally:
            await runtime.watcher.stop()
            await runtime.close()
            await access.close()

    return Litestar(
        route_handlers=[
            chat_completions,
            embeddings,
            models,
            health,
            provider_health,
            metrics,
            console.router,
            admin_router(),
        ],
        lifespan=[lifespan, console.lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[guard_middleware],
        openapi_config=openapi_config(),
        # every route but chat (its own cap, max_body_bytes) takes small JSON; the guard
        # enforces both before a byte is read, this is litestar's own second line
        request_max_body_size=settings.admin_max_body_bytes,
        logging_config=None,
        debug=False,
    )


def _open_spool(settings: GatewaySettings) -> OutageSpool | None:
    if settings.spool.dir is None:
        log.warning(
            "no outage spool (FLOOPY_GATEWAY_SPOOL__DIR): while Redis is down, records and "
            "usage wait in memory only"
        )
        return None
    names = [sink.value for sink in Sink] + [USAGE]
    return OutageSpool.open(settings.spool, names, prefix=settings.redis.key_prefix)


def configure_logging(settings: GatewaySettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s %(message)s",
    )
    # aiohttp/redis are quiet at INFO; keep chatty third parties at WARNING all the same.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def app_factory() -> Litestar:
    """For ``granian --factory gateway.app:app_factory``: settings from the environment."""
    settings = GatewaySettings()
    configure_logging(settings)
    return create_app(settings, os.environ)
