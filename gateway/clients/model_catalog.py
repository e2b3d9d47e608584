"""``GET /v1/models``: the models a key can reach, in OpenAI's list format.

What is known: each provider's ``models`` (and Azure ``deployments``), the routing rules' model
names, and for a provider that lists neither (a catch-all or a prefix-matched one) the models
its own API lists (``GET /models``), kept only when they match its prefixes. The upstream lists
are asked at most once per ``ttl_s`` per worker and in parallel; a provider that fails to answer
is logged and left out of that answer, never an error for the caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from gateway.clients.providers.base import ProviderClient
from gateway.settings import GatewaySettings
from shared.errors import ClientError, UpstreamError

__all__ = ["ModelCatalog"]

log = logging.getLogger(__name__)


Source = Callable[[], tuple[GatewaySettings, dict[str, ProviderClient]]]


class ModelCatalog:
    """``source`` gives the settings and provider clients in force at each call (the routing
    watcher swaps them when stored routing changes; the upstream lists are asked again then)."""

    def __init__(self, source: Source, *, ttl_s: float = 60.0) -> None:
        self._source = source
        self._ttl_s = ttl_s
        self._listed: dict[str, list[str]] = {}
        self._listed_at = -1e9
        self._listed_for = 0

    async def _upstream_lists(
        self, settings: GatewaySettings, providers: dict[str, ProviderClient]
    ) -> dict[str, list[str]]:
        fresh = time.monotonic() - self._listed_at < self._ttl_s
        if fresh and self._listed_for == id(providers):
            return self._listed
        asked = [p for p in settings.provider_list() if not p.models and p.name in providers]
        answers = await asyncio.gather(
            *(providers[p.name].list_models() for p in asked), return_exceptions=True
        )
        listed: dict[str, list[str]] = {}
        for provider, answer in zip(asked, answers, strict=True):
            if isinstance(
                answer, UpstreamError | ClientError | msgspec.DecodeError | msgspec.ValidationError
            ):
                log.warning("provider %s did not list its models: %s", provider.name, answer)
                continue
            if isinstance(answer, BaseException):
                raise answer
            prefixes = tuple(provider.model_prefixes)
            listed[provider.name] = [m for m in answer if not prefixes or m.startswith(prefixes)]
        self._listed, self._listed_at, self._listed_for = listed, time.monotonic(), id(providers)
        return listed

    async def models(self) -> list[dict[str, Any]]:
        settings, providers = self._source()
        owners: dict[str, str] = {}
        for provider in settings.provider_list():
            for model in [*provider.models, *provider.deployments]:
                owners.setdefault(model, provider.name)
        for name, models in (await self._upstream_lists(settings, providers)).items():
            for model in models:
                owners.setdefault(model, name)
        for model, targets in settings.routes.items():
            owners.setdefault(model, targets[0].split("/", 1)[0] if targets else "floopy")
        return [
            {"id": model, "object": "model", "created": 0, "owned_by": owner}
            for model, owner in sorted(owners.items())
        ]
