"""Which providers serve a model, in which order, and what a failed attempt means (pure).

Resolution of the requested model; the first rule that matches wins:

1. a routing rule for the exact model name: its targets, in order (``"<provider>"`` keeps the
   model, ``"<provider>/<model>"`` changes it);
2. ``<provider>/<model>`` where ``<provider>`` is a configured provider: that provider, with the
   model after the first slash (so ``openrouter/meta-llama/llama-3`` works);
3. providers that list the model by name, then those whose prefix matches, in config order;
4. providers that list neither (catch-all), in config order.

Nothing matches: 400 BAD_REQUEST naming the model, since the caller can fix it and no provider
was asked. A provider with an ``orgs`` allow-list is left out of every step for other orgs
(an explicit ``<provider>/<model>`` to it included); without a list it serves every org.
Several providers from steps 3-4 are tried in turn, so two accounts serving the same
models fall back to each other without a rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import msgspec

from gateway.policy.upstream_errors import CLIENT_MISTAKE_STATUSES
from shared.errors import BadRequestError, ClientError, UpstreamError

__all__ = [
    "Outcome",
    "ProviderModels",
    "RoutingTable",
    "Target",
    "classify_failure",
    "counts_against_breaker",
    "retryable",
]

_KEY_STATUSES = frozenset({401, 403})


class Target(msgspec.Struct, frozen=True):
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True)
class ProviderModels:
    """What one provider serves, as configured."""

    name: str
    models: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    orgs: frozenset[str] = frozenset()
    """Orgs allowed to use this provider; empty: all."""

    @property
    def catch_all(self) -> bool:
        return not self.models and not self.prefixes

    def serves_by_prefix(self, model: str) -> bool:
        return any(model.startswith(prefix) for prefix in self.prefixes)


@dataclass
class RoutingTable:
    """Built once at start-up; raises ``ValueError`` for a configuration that cannot route."""

    providers: Sequence[ProviderModels]
    rules: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [p.name for p in self.providers]
        if not names:
            raise ValueError("no provider is configured")
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique: {names}")
        bad = [n for n in names if not n or "/" in n]
        if bad:
            raise ValueError(f"provider names must be non-empty and without '/': {bad}")
        self._names = frozenset(names)
        self._orgs = {p.name: p.orgs for p in self.providers if p.orgs}
        self._rules = {
            model: tuple(self._parse(model, spec) for spec in specs)
            for model, specs in self.rules.items()
        }
        empty = [model for model, targets in self._rules.items() if not targets]
        if empty:
            raise ValueError(f"routing rules without targets: {empty}")

    def _parse(self, model: str, spec: str) -> Target:
        provider, _, target_model = spec.partition("/")
        if provider not in self._names:
            raise ValueError(f"routing rule for {model!r}: unknown provider in {spec!r}")
        return Target(provider, target_model or model)

    def targets(self, model: str, org_id: str = "") -> list[Target]:
        """The targets ``org_id`` may use, in order (every target when no org is given)."""
        found = self._all_targets(model)
        if not self._orgs or not org_id:
            return found
        allowed = [t for t in found if org_id in self._orgs.get(t.provider, (org_id,))]
        if not allowed:
            raise BadRequestError(
                f"model {model!r} is not available to this organization", details={"param": "model"}
            )
        return allowed

    def _all_targets(self, model: str) -> list[Target]:
        rule = self._rules.get(model)
        if rule is not None:
            return list(rule)
        provider, slash, rest = model.partition("/")
        if slash and rest and provider in self._names:
            return [Target(provider, rest)]
        found = [Target(p.name, model) for p in self.providers if model in p.models]
        found += [
            Target(p.name, model)
            for p in self.providers
            if model not in p.models and p.serves_by_prefix(model)
        ]
        if not found:
            found = [Target(p.name, model) for p in self.providers if p.catch_all]
        if not found:
            raise BadRequestError(f"no provider serves model {model!r}", details={"param": "model"})
        return found


class Outcome(StrEnum):
    """What one attempt at one target came to."""

    OK = "ok"
    CLIENT_ERROR = "client_error"
    """The provider refused the request itself (400/404/422): another provider would too."""
    RETRYABLE = "retryable"
    """5xx, 429, refused or dropped connection: worth another attempt, then the next target."""
    TIMEOUT = "timeout"
    """No answer in time: straight to the next target (waiting again doubles the wait)."""
    FAILED = "failed"
    """The provider rejected our key (401/403): the next target, no retry."""
    SKIPPED = "skipped"
    """Not sent: the provider's circuit breaker is open."""


def classify_failure(error: UpstreamError | ClientError) -> Outcome:
    """An ``UpstreamError`` by what the provider did; a ``ClientError`` raised while trying a
    target (a request the adapter cannot send) is about the caller, not the provider."""
    if not isinstance(error, UpstreamError):
        return Outcome.CLIENT_ERROR
    if error.timed_out:
        return Outcome.TIMEOUT
    if error.status in CLIENT_MISTAKE_STATUSES:
        return Outcome.CLIENT_ERROR
    return Outcome.FAILED if error.status in _KEY_STATUSES else Outcome.RETRYABLE


def retryable(error: BaseException) -> bool:
    return isinstance(error, UpstreamError) and classify_failure(error) is Outcome.RETRYABLE


def counts_against_breaker(outcome: Outcome) -> bool:
    return outcome in {Outcome.RETRYABLE, Outcome.TIMEOUT, Outcome.FAILED}
