"""The console: the read API (``/console/api``) and the dashboard pages (``/console``), served
by the gateway app itself. ``Console(clickhouse, authenticator)`` gives the router to mount (its
handlers are handed the store and the caller) and a lifespan hook that closes the ClickHouse
pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Router
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from gateway.console.api import Authenticator, ConsoleApi, Principal
from gateway.console.pages import page_handlers
from gateway.console.store import ConsoleStore
from shared.settings import ClickHouseSettings

__all__ = ["Console", "Principal", "openapi_config"]


def openapi_config() -> OpenAPIConfig:
    """The spec is at ``/schema/openapi.json`` (and ``.yaml``); no UI bundle from a CDN."""
    bearer = SecurityScheme(
        type="http",
        scheme="bearer",
        description="A Floopy API key with the read permission; it scopes every answer to its org",
    )
    return OpenAPIConfig(
        title="Floopy",
        version="1.0.0",
        path="/schema",
        render_plugins=[],
        components=Components(security_schemes={"BearerAuth": bearer}),
    )


class Console:
    """``authenticator``: who may read; without one, the app provides its own (the gateway's
    key store, as the ``authenticator`` dependency)."""

    def __init__(
        self,
        clickhouse: ClickHouseSettings,
        authenticator: Authenticator | None = None,
        *,
        pool_size: int = 4,
    ) -> None:
        self._clickhouse = clickhouse
        self._pool_size = pool_size
        self._authenticator = authenticator
        self.store: ConsoleStore | None = None

    def _store(self) -> ConsoleStore:
        if self.store is None:
            self.store = ConsoleStore(self._clickhouse, pool_size=self._pool_size)
        return self.store

    @property
    def router(self) -> Router:
        store = self._store()
        dependencies = {"store": Provide(lambda: store, use_cache=True, sync_to_thread=False)}
        authenticator = self._authenticator
        if authenticator is not None:
            dependencies["authenticator"] = Provide(
                lambda: authenticator, use_cache=True, sync_to_thread=False
            )
        return Router(
            path="/",
            route_handlers=[ConsoleApi, *page_handlers()],
            dependencies=dependencies,
        )

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if self.store is not None:
                self.store.close()
