"""The ASGI application. ``create_app(settings)`` builds it; nothing is built at import.

Every HTTP request meets the guard first (``gateway.guard``); then ``POST`` to a proxied path
goes straight to its plain ASGI endpoint (``gateway.routes.proxy_endpoints``), everything else
(models, health, metrics, the admin API, the console) to the Litestar app, which also runs the
lifespan.

Per worker, the lifespan opens the services (``gateway.services.open_services``) on the
worker's own event loop and closes them at shutdown in reverse order. What each route,
controller and stage uses is handed to it: controllers through Litestar's dependency injection
(the names in ``_dependencies``), the guard and the proxied routes through ``Opened`` slots the
lifespan fills (injection would cost the chat route ≈15 µs of CPU per request).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from gateway.admin.api import admin_router
from gateway.asgi import send_whole
from gateway.console import Console, openapi_config
from gateway.console.auth import reader_keys
from gateway.errors import EXCEPTION_HANDLERS, send_error
from gateway.guard import Guard, GuardDeps
from gateway.provider_health import provider_health
from gateway.proxy_spec import document
from gateway.routes import Proxy, health, metrics, models, proxy_endpoints
from gateway.services import Opened, Services, open_services
from gateway.settings import GatewaySettings
from shared.errors import MethodNotAllowedError

__all__ = ["GatewayApp", "app_factory", "configure_logging", "create_app"]

log = logging.getLogger(__name__)


_ALLOW = (b"allow", b"OPTIONS, POST")


class GatewayApp:
    """What granian serves: the guard, then the proxied endpoints or Litestar."""

    def __init__(
        self, litestar: Litestar, proxied: Mapping[str, ASGIApp], guard: Opened[GuardDeps]
    ) -> None:
        self.litestar = litestar
        self._proxied = proxied
        self._guarded = Guard(self._route, guard)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            await self._guarded(scope, receive, send)
        else:  # lifespan, websocket
            await self.litestar(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._proxied.get(scope["path"])
        if endpoint is None:
            await self.litestar(scope, receive, send)
        elif (method := scope.get("method")) == "POST":
            await endpoint(scope, receive, send)
        elif method == "OPTIONS":  # as Litestar answers it for its own routes
            await send_whole(send, 204, [_ALLOW], b"")
        else:
            said = f"method {method} is not allowed here; use POST"
            await send_error(send, MethodNotAllowedError(said, headers={"Allow": "OPTIONS, POST"}))


def create_app(settings: GatewaySettings, environ: Mapping[str, str] | None = None) -> GatewayApp:
    """``environ``: where the config seed reads ``secret_env`` keys (the process environment when
    served by ``app_factory``)."""
    services: Opened[Services] = Opened()
    proxy: Opened[Proxy] = Opened()
    guard: Opened[GuardDeps] = Opened()
    console = Console(settings.clickhouse, pool_size=settings.console_pool_size)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_services(settings, environ or {}) as opened:
            services.set(opened)
            proxy.set(Proxy.of(opened))
            guard.set(
                GuardDeps(
                    opened.settings, opened.access.authenticator, opened.in_flight, opened.counters
                )
            )
            # What start-up built lives as long as the worker: move it out of the collector's
            # way, so a full collection scans what requests leave behind, not ~100 MB of
            # modules and clients (measured: a 64 ms stall per full collection otherwise). A
            # request leaves few cycles, so young collections every 20,000 allocations rather
            # than 700 (~5% of CPU).
            gc.freeze()
            gc.set_threshold(20_000, 20, 100)
            try:
                yield
            finally:
                guard.set(None)
                proxy.set(None)
                services.set(None)

    litestar = Litestar(
        route_handlers=[
            models,
            health,
            provider_health,
            metrics,
            console.router,
            admin_router(),
        ],
        lifespan=[lifespan, console.lifespan],
        on_startup=[document],
        dependencies=_dependencies(services),
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=openapi_config(),
        # every route but chat (its own cap, max_body_bytes) takes small JSON; the guard
        # enforces both before a byte is read, this is litestar's own second line
        request_max_body_size=settings.admin_max_body_bytes,
        logging_config=None,
        debug=False,
    )
    return GatewayApp(litestar, proxy_endpoints(proxy), guard)


def _dependencies(opened: Opened[Services]) -> dict[str, Provide]:
    """What controllers may ask for by name, each read from the worker's open services."""

    def provide(pick: Callable[[Services], Any]) -> Provide:
        return Provide(lambda: pick(opened.value), sync_to_thread=False)

    return {
        "services": provide(lambda s: s),
        "settings": provide(lambda s: s.settings),
        "access": provide(lambda s: s.access),
        "key_auth": provide(lambda s: s.access.authenticator),
        "admin_store": provide(lambda s: s.access.admin_store),
        "usage_counters": provide(lambda s: s.access.usage_counters),
        "templates": provide(lambda s: s.access.templates),
        "routing_config": provide(lambda s: s.access.routing_config),
        "audit_log": provide(lambda s: s.access.audit),
        "generation": provide(lambda s: s.generation),
        "catalog": provide(lambda s: s.catalog),
        "counters": provide(lambda s: s.counters),
        "authenticator": provide(lambda s: reader_keys(s.access.authenticator)),
    }


def configure_logging(settings: GatewaySettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s %(message)s",
    )
    # aiohttp/redis are quiet at INFO; keep chatty third parties at WARNING all the same.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def app_factory() -> GatewayApp:
    """For ``granian --factory gateway.app:app_factory``: settings from the environment."""
    settings = GatewaySettings()
    configure_logging(settings)
    return create_app(settings, os.environ)
