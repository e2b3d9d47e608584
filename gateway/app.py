"""The litestar application. ``create_app(settings)`` builds it; nothing is built at import.

Per worker, the lifespan opens the ``Runtime`` (Redis client, publisher task, provider clients)
on the worker's own event loop and closes it at shutdown (publisher flush first).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar

from gateway.console import Console, openapi_config
from gateway.console.auth import static_keys
from gateway.errors import EXCEPTION_HANDLERS
from gateway.routes import chat_completions, health
from gateway.runtime import Runtime
from gateway.settings import GatewaySettings

__all__ = ["app_factory", "configure_logging", "create_app"]


def create_app(settings: GatewaySettings) -> Litestar:
    console = Console(
        settings.clickhouse, static_keys(settings.api_keys), pool_size=settings.console_pool_size
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime = await Runtime.open(settings)
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.close()

    return Litestar(
        route_handlers=[chat_completions, health, console.router],
        lifespan=[lifespan, console.lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=openapi_config(),
        request_max_body_size=None,  # the intake stage enforces max_body_bytes itself
        logging_config=None,
        debug=False,
    )


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
    return create_app(settings)
