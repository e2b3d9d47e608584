"""Which provider serves a model (pure). First cut: the one configured provider serves all."""

from __future__ import annotations

from collections.abc import Sequence

from shared.errors import ProviderError

__all__ = ["choose_providers"]


def choose_providers(model: str, available: Sequence[str]) -> list[str]:
    """Providers to try for ``model``, in order (fallbacks come later)."""
    if not available:
        raise ProviderError(f"no provider is configured for model {model!r}")
    return [available[0]]
