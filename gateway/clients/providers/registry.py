"""Which adapter speaks which wire format (``ProviderSettings.kind``)."""

from __future__ import annotations

from gateway.clients.providers.anthropic import AnthropicProvider
from gateway.clients.providers.base import ProviderClient
from gateway.clients.providers.openai import AzureOpenAIProvider, OpenAIProvider
from gateway.settings import ProviderSettings

__all__ = ["make_provider"]

_ADAPTERS: dict[str, type[ProviderClient]] = {
    "openai": OpenAIProvider,
    "azure": AzureOpenAIProvider,
    "anthropic": AnthropicProvider,
}


def make_provider(settings: ProviderSettings) -> ProviderClient:
    """The adapter of ``settings.kind``, not opened yet."""
    return _ADAPTERS[settings.kind](settings)  # type: ignore[call-arg]  # all take settings
