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
import time
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

import msgspec
from genai_prices import Usage, calc_price
from genai_prices.types import ModelPrice as LibraryPrice

from shared.metrics import CounterSet, counted

__all__ = ["ModelPrice", "PriceBook"]

log = logging.getLogger(__name__)

_PER_MILLION = 1_000_000
RESOLVED_TTL_S = 3600.0
_MAX_RESOLVED = 1024
_FLAT_FIELDS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")


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

    unknown_models = counted("unknown_models")
    """Costs asked for a model without a price (each time, not once per model)."""

    def __init__(
        self,
        overrides: Mapping[str, ModelPrice] | None = None,
        *,
        counters: CounterSet | None = None,
    ) -> None:
        self._overrides = dict(overrides or {})
        self._reported: set[tuple[str, str]] = set()
        self._resolved: dict[tuple[str, str], tuple[float, ModelPrice | LibraryPrice | None]] = {}
        self.counters = counters or CounterSet.local("unknown_models")

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
        found = self._lookup(provider, model, at)
        if found is None:
            self._unknown(provider, model)
            return None
        if isinstance(found, ModelPrice):
            return found.cost(
                prompt_tokens, completion_tokens, cached_prompt_tokens, cache_write_tokens
            )
        usage = Usage(
            input_tokens=prompt_tokens,
            output_tokens=completion_tokens,
            cache_read_tokens=cached_prompt_tokens,
            cache_write_tokens=cache_write_tokens,
        )
        return float(found.calc_price(usage)["total_price"])

    def _lookup(
        self, provider: str, model: str, at: datetime | None
    ) -> ModelPrice | LibraryPrice | None:
        """The price the library has for (provider, model), remembered for ``RESOLVED_TTL_S``:
        matching a model reference costs ≈0.15-0.6 ms, too much to repeat per request."""
        if at is not None:  # a price at another time: not what the memory holds
            return _resolve(provider, model, at)
        now = time.monotonic()
        hit = self._resolved.get((provider, model))
        if hit is not None and hit[0] > now:
            return hit[1]
        found = _resolve(provider, model, None)
        if len(self._resolved) >= _MAX_RESOLVED:  # model names come from callers: bounded
            self._resolved.clear()
        self._resolved[(provider, model)] = (now + RESOLVED_TTL_S, found)
        return found

    def _unknown(self, provider: str, model: str) -> None:
        self.counters.inc("unknown_models")
        if (provider, model) not in self._reported:
            self._reported.add((provider, model))
            log.warning(
                "no price for model %r of provider %r: cost recorded as unknown "
                "(add an override in config)",
                model,
                provider,
            )


def _resolve(provider: str, model: str, at: datetime | None) -> ModelPrice | LibraryPrice | None:
    """The library's price for the model: for ``provider`` first, then for the model alone."""
    probe = Usage(input_tokens=1, output_tokens=1)
    for provider_id in (provider, None):
        try:
            found = calc_price(probe, model, provider_id=provider_id, genai_request_timestamp=at)
        except LookupError:  # unknown provider id, then unknown model
            continue
        return _flat(found.model_price)
    return None


def _flat(price: LibraryPrice) -> ModelPrice | LibraryPrice:
    """Plain per-token rates as our own ``ModelPrice`` (a few float operations per request);
    tiered prices or a per-request fee stay with the library's own calculation."""
    rates = [getattr(price, name, None) for name in _FLAT_FIELDS]
    if getattr(price, "requests_kcount", None) is not None or not all(
        r is None or isinstance(r, (int, float, Decimal)) for r in rates
    ):
        return price
    inp, out, cached, write = (None if r is None else float(r) for r in rates)
    return ModelPrice(
        input_per_mtok=inp or 0.0,
        output_per_mtok=out or 0.0,
        cached_input_per_mtok=cached,
        cache_write_per_mtok=write,
    )
