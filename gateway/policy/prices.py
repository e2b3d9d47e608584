"""The cost of a request in USD, from the ``genai-prices`` library's bundled data, offline.

``genai-prices`` ships its price table inside the package and reads nothing from the network
unless ``UpdatePrices`` is started, which Floopy never does: prices change with a dependency
bump (reviewed like any other change), and per-model overrides in config cover the gap when a
contract price differs or a model is newer than the library.

An unknown model costs ``None``, never 0: a zero would read as "free" in every sum and chart.
Each unknown (provider, model) is logged once per process and counted every time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

import msgspec
from genai_prices import Usage, calc_price

__all__ = ["ModelPrice", "PriceBook"]

log = logging.getLogger(__name__)

_PER_MILLION = 1_000_000


class ModelPrice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """USD per million tokens. Cached and cache-write prices default to the input price."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None

    def cost(self, prompt: int, completion: int, cached: int, cache_write: int) -> float:
        cached_rate = (
            self.input_per_mtok
            if self.cached_input_per_mtok is None
            else self.cached_input_per_mtok
        )
        write_rate = (
            self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        )
        plain = max(0, prompt - cached - cache_write)
        total = (
            plain * self.input_per_mtok
            + cached * cached_rate
            + cache_write * write_rate
            + completion * self.output_per_mtok
        )
        return total / _PER_MILLION


class PriceBook:
    """Prices for every model the gateway routes to. One per process, built at start-up.

    ``overrides`` maps ``"<provider>/<model>"`` or ``"<model>"`` to a price; the provider-specific
    entry wins. Provider names are Floopy's (``openai``, ``anthropic``, ``groq`` ...); for
    providers the library does not know (a self-hosted vLLM) it matches on the model alone.
    """

    def __init__(self, overrides: Mapping[str, ModelPrice] | None = None) -> None:
        self._overrides = dict(overrides or {})
        self._reported: set[tuple[str, str]] = set()
        self.unknown_models = 0

    def cost_usd(
        self,
        *,
        provider: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_prompt_tokens: int = 0,
        cache_write_tokens: int = 0,
        at: datetime | None = None,
    ) -> float | None:
        """``prompt_tokens`` counts all input tokens, cached and cache-written included (the
        OpenAI convention; the Anthropic adapter adds its cache tokens in)."""
        override = self._overrides.get(f"{provider}/{model}") or self._overrides.get(model)
        if override is not None:
            return override.cost(
                prompt_tokens, completion_tokens, cached_prompt_tokens, cache_write_tokens
            )
        usage = Usage(
            input_tokens=prompt_tokens,
            output_tokens=completion_tokens,
            cache_read_tokens=cached_prompt_tokens,
            cache_write_tokens=cache_write_tokens,
        )
        for provider_id in (provider, None):
            try:
                price = calc_price(
                    usage, model, provider_id=provider_id, genai_request_timestamp=at
                )
            except LookupError:  # unknown provider id, then unknown model
                continue
            return float(price.total_price)
        self._unknown(provider, model)
        return None

    def _unknown(self, provider: str, model: str) -> None:
        self.unknown_models += 1
        if (provider, model) not in self._reported:
            self._reported.add((provider, model))
            log.warning(
                "no price for model %r of provider %r: cost recorded as unknown "
                "(add an override in config)",
                model,
                provider,
            )
