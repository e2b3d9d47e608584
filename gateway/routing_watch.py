"""Stored providers and routes reach every worker without a restart.

Invariants:
- Each worker polls one integer (``RoutingConfigStore.version``, bumped by every write) every
  ``routing_refresh_s``; when it moved, the worker reads the stored providers and routes, merges
  them over its own settings (``merge_routing``, as at start-up) and replaces the worker's
  ``Generation`` (settings and ``Upstreams`` together). A request already past routing keeps
  the adapter it holds; adapters left behind are closed after their ``timeout_s`` (plus a
  margin), so a request or stream still using one is not cut.
- A stored configuration that cannot route is logged and counted (``failures``) and the current
  generation keeps serving; the same version is not retried until it moves again.
- Redis unreachable: logged and counted, the current generation keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from gateway.metrics import access_counters
from gateway.routing_checks import merge_routing
from shared.errors import ClientError
from shared.metrics import counted

if TYPE_CHECKING:
    from gateway.clients.providers.base import ProviderClient
    from gateway.clients.routing_config import RoutingConfigStore
    from gateway.generation import Generation
    from gateway.settings import GatewaySettings, ProviderSettings

__all__ = ["RoutingWatcher"]

log = logging.getLogger(__name__)

_RETIRE_MARGIN_S = 5.0


class RoutingWatcher:
    reloads = counted("reloads")
    failures = counted("failures")

    def __init__(
        self,
        generation: Generation,
        store: RoutingConfigStore,
        base: GatewaySettings,
        *,
        seen_version: int,
        interval_s: float,
    ) -> None:
        self._generation = generation
        self._store = store
        self._base = base
        self._seen = seen_version
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self.counters = access_counters("routing_watch", "reloads", "failures")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="routing-watch")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._retiring) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None

    @property
    def base(self) -> GatewaySettings:
        """The worker's own settings, before stored providers and routes are merged in."""
        return self._base

    def stats(self) -> dict[str, int]:
        return {"version": self._seen, "reloads": self.reloads, "failures": self.failures}

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.check()

    async def check(self) -> bool:
        """Reload if the stored version moved; True when a new generation was swapped in."""
        try:
            version = await self._store.version()
            if version == self._seen:
                return False
            providers = await self._store.providers()
            routes = await self._store.routes()
        except (RedisError, OSError) as exc:
            self.counters.inc("failures")
            log.warning(
                "stored routing unreadable (%s: %s); keeping the current one",
                type(exc).__name__,
                exc,
            )
            return False
        self._seen = version
        merged = merge_routing(self._base, providers, routes)
        old = self._generation.upstreams
        try:
            upstreams, retired = await old.rebuilt(merged)
        except (ClientError, ValueError, KeyError) as exc:
            self.counters.inc("failures")
            log.error(
                "stored routing version %d cannot route (%s); keeping the current one", version, exc
            )
            return False
        self._generation.replace(merged, upstreams)
        self.counters.inc("reloads")
        log.info(
            "routing version %d: %d providers, %d routes",
            version,
            len(upstreams.providers),
            len(merged.routes),
        )
        if retired:
            grace_s = max(_timeout_s(old.built_from, p.name) for p in retired) + _RETIRE_MARGIN_S
            task = asyncio.get_running_loop().create_task(self._retire(retired, grace_s))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        return True

    async def _retire(self, providers: list[ProviderClient], grace_s: float) -> None:
        try:
            await asyncio.sleep(grace_s)
        finally:
            for provider in providers:
                try:
                    await provider.aclose()
                except Exception:  # one bad close must not keep the others open
                    log.exception("retired provider %s did not close cleanly", provider.name)


def _timeout_s(built_from: Mapping[str, ProviderSettings], name: str) -> float:
    config = built_from.get(name)
    return config.timeout_s if config is not None else 120.0
