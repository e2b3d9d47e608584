"""The firewall's decisions (pure): whether a request is screened, with which classifier model,
against which thresholds, and what a score means.

- An org's settings (``FirewallConfig``, stored with the org) say whether its requests are
  screened, which model classifies them (empty: the deployment's ``firewall.model``), the flag
  and block thresholds, what a classifier failure means (``open``: let the request through and
  record ``error``; ``closed``: refuse it with 503 FIREWALL_UNAVAILABLE) and whether a caller
  may switch screening off per request (``floopy-llm-security-enabled: false``).
- A key may tighten or loosen the thresholds for its own requests (``KeyLimits``).
- ``score >= block`` blocks, ``flag <= score < block`` flags, anything lower passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import msgspec

from shared.errors import BadRequestError

__all__ = [
    "DEFAULT_BLOCK_THRESHOLD",
    "DEFAULT_FLAG_THRESHOLD",
    "HEADER_IGNORED",
    "FailPolicy",
    "FirewallConfig",
    "FirewallOutcome",
    "Screen",
    "SkipReason",
    "Thresholds",
    "Verdict",
    "check_threshold",
    "decide",
    "plan_screening",
    "thresholds_for",
]

DEFAULT_FLAG_THRESHOLD = 0.5
DEFAULT_BLOCK_THRESHOLD = 0.8

FailPolicy = Literal["open", "closed"]


def check_threshold(name: str, value: float | None) -> None:
    """A 400 naming the field, raised while a setting is decoded (API, seed, CLI)."""
    if value is not None and not 0.0 <= value <= 1.0:
        raise BadRequestError(f"{name} must be between 0 and 1 (got {value})")


class FirewallConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An org's firewall settings (``GET /admin/orgs/{org}`` → ``firewall``)."""

    enabled: bool = True
    model: str = ""
    """The classifier's model ref (``openai/gpt-4o-mini``); empty: the deployment's default."""
    flag_threshold: float = DEFAULT_FLAG_THRESHOLD
    block_threshold: float = DEFAULT_BLOCK_THRESHOLD
    fail_policy: FailPolicy = "open"
    honour_header: bool = True
    """Whether ``floopy-llm-security-enabled: false`` may skip screening for a request."""

    def __post_init__(self) -> None:
        check_threshold("flag_threshold", self.flag_threshold)
        check_threshold("block_threshold", self.block_threshold)
        if self.flag_threshold > self.block_threshold:
            raise BadRequestError("flag_threshold must not be above block_threshold")


class Verdict(StrEnum):
    PASS = "pass"
    FLAG = "flag"
    BLOCK = "block"
    ERROR = "error"
    """The classifier failed and the org fails open: the request went through unscreened."""
    SKIPPED = "skipped"


class SkipReason(StrEnum):
    HEADER = "header"
    """``floopy-llm-security-enabled: false`` and the org honours it."""
    KEY = "key"
    """The key's ``firewall`` switch is off."""
    ORG = "org"
    """The org switched its firewall off."""
    NO_MODEL = "no_model"
    """Neither the org nor the deployment names a classifier model."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    flag: float
    block: float


def thresholds_for(
    config: FirewallConfig, key_flag: float | None, key_block: float | None
) -> Thresholds:
    """The key's own thresholds over the org's. A key's block threshold below the org's flag
    threshold pulls the flag threshold down with it (everything it flags, it blocks)."""
    block = config.block_threshold if key_block is None else key_block
    flag = config.flag_threshold if key_flag is None else key_flag
    return Thresholds(flag=min(flag, block), block=block)


def decide(score: float, thresholds: Thresholds) -> Verdict:
    if score >= thresholds.block:
        return Verdict.BLOCK
    if score >= thresholds.flag:
        return Verdict.FLAG
    return Verdict.PASS


@dataclass(frozen=True, slots=True)
class Screen:
    """Screen the request with this classifier model; ``note`` is recorded as the reason (a
    per-request opt-out the org does not honour)."""

    model_ref: str
    note: str = ""


HEADER_IGNORED = "header ignored: the org does not allow opting out per request"


def plan_screening(
    config: FirewallConfig,
    *,
    default_model: str,
    key_switch: bool,
    header_enabled: bool,
) -> Screen | SkipReason:
    """Screen, or why not. The key's switch and the org's come before the header, so a skip
    is recorded with the most lasting reason."""
    if not config.enabled:
        return SkipReason.ORG
    if not key_switch:
        return SkipReason.KEY
    model = config.model or default_model
    if not model:
        return SkipReason.NO_MODEL
    if not header_enabled:
        if config.honour_header:
            return SkipReason.HEADER
        return Screen(model, HEADER_IGNORED)
    return Screen(model)


class FirewallOutcome(msgspec.Struct):
    """What the firewall stage found for one request (the record's ``firewall_*`` fields)."""

    verdict: str = ""
    """A ``Verdict``; empty when the stage did not run (the request ended before it)."""
    score: float | None = None
    source: str = ""
    """``cache`` or ``classifier``: where the verdict came from."""
    backend: str = ""
    """The provider that answered the classifier call (or the last one tried)."""
    model_ref: str = ""
    categories: tuple[str, ...] = ()
    reason: str = ""
    latency_ms: float = 0.0
    """The classifier call's time, retries and fallbacks included (0 on a verdict-cache hit)."""
    tokens: int = 0
    cost_usd: float | None = None
