"""A circuit breaker per provider, as a pure state machine over plain values.

    closed ──K failures within window──▶ open ──cool-down over, one caller admitted──▶ half_open
      ▲                                   ▲                                            │
      └────────── the probe succeeds ─────┼────────────────────────────────────────────┘
                                          └──────────── the probe fails ───────────────┘

Failures are weighed per org (issue 10: one tenant's self-inflicted 5xx opened a provider for
everyone). Each failure carries the org whose request failed; the provider-wide breaker opens
only when the failures within the window come from at least ``min_orgs`` orgs. Each org also
has a breaker of its own per provider (``min_orgs`` 1), so a provider failing one org's requests
only is skipped for that org alone; single-tenant deployments are protected by that one.
A failure no request can cause (the provider unreachable, a timeout, a cut stream) is
recorded with org ``ANY_ORG`` and counts as coming from every org: it opens as before.

Every function takes the state and the time and returns the new state plus the transition that
happened (or None), so each state change can become a ``BreakerEventRecord`` and the state can
live anywhere (``gateway.clients.breaker_store`` keeps it in Redis). Only one probe runs at a
time in half-open; a probe that never reports back (its worker died) is given up after
``probe_timeout_s`` and another caller may probe.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

import msgspec

from shared.records import BreakerEventRecord

__all__ = [
    "ANY_ORG",
    "Admission",
    "BreakerConfig",
    "BreakerState",
    "BreakerStatus",
    "Transition",
    "admit",
    "on_failure",
    "on_success",
    "recent_failures",
    "to_event",
]


ANY_ORG = "*"
"""The org of a failure that no request's content can cause (org ids never hold ``*``)."""


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Admission(StrEnum):
    ALLOW = "allow"  # closed: go ahead
    PROBE = "probe"  # half-open: this caller is the one probe
    REJECT = "reject"  # open, or half-open with a probe in flight: skip this provider


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 5
    window_s: float = 30.0
    cooldown_s: float = 30.0
    probe_timeout_s: float = 30.0
    min_orgs: int = 1
    """Distinct orgs among the window's failures needed to open (the provider-wide breaker
    uses ``breaker.min_orgs``, 2 by default; an org's own breaker 1)."""

    def __post_init__(self) -> None:
        # The status keeps max(threshold, 100) failure times: bounded, and enough to decide.
        if not 1 <= self.failure_threshold <= 1000:
            raise ValueError("failure_threshold must be 1..1000")
        if min(self.window_s, self.cooldown_s, self.probe_timeout_s) <= 0:
            raise ValueError("breaker durations must be positive")


class BreakerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What is stored per provider. ``failures`` are the times (s) of recent failures, newest
    last, kept for the window only."""

    state: BreakerState = BreakerState.CLOSED
    failures: tuple[float, ...] = ()
    failure_orgs: tuple[str, ...] = ()
    """The org of each failure, same order as ``failures`` (may be shorter in old states)."""
    opened_at: float = 0.0
    probe_started_at: float = 0.0  # 0: no probe in flight


@dataclass(frozen=True)
class Transition:
    from_state: BreakerState
    to_state: BreakerState
    failure_count: int
    reason: str


def recent_failures(status: BreakerStatus, now: float, config: BreakerConfig) -> tuple[float, ...]:
    return tuple(t for t in status.failures if t > now - config.window_s)


def admit(
    status: BreakerStatus, now: float, config: BreakerConfig
) -> tuple[Admission, BreakerStatus, Transition | None]:
    """May a request go to this provider now?"""
    if status.state is BreakerState.CLOSED:
        return Admission.ALLOW, status, None
    if status.state is BreakerState.OPEN:
        if now < status.opened_at + config.cooldown_s:
            return Admission.REJECT, status, None
        probing = _replace(status, state=BreakerState.HALF_OPEN, probe_started_at=now)
        transition = Transition(
            BreakerState.OPEN, BreakerState.HALF_OPEN, len(status.failures), "cool-down over"
        )
        return Admission.PROBE, probing, transition
    if status.probe_started_at and now < status.probe_started_at + config.probe_timeout_s:
        return Admission.REJECT, status, None
    return Admission.PROBE, _replace(status, probe_started_at=now), None


def on_failure(
    status: BreakerStatus, now: float, config: BreakerConfig, org: str = ""
) -> tuple[BreakerStatus, Transition | None]:
    keep = max(config.failure_threshold, 100)
    recent = [
        (t, o)
        for t, o in zip(status.failures, _orgs_of(status), strict=True)
        if t > now - config.window_s
    ]
    recent = [*recent, (now, org)][-keep:]
    failures = tuple(t for t, _ in recent)
    orgs = tuple(o for _, o in recent)
    if status.state is BreakerState.HALF_OPEN:
        opened = BreakerStatus(
            state=BreakerState.OPEN, failures=failures, failure_orgs=orgs, opened_at=now
        )
        return opened, Transition(
            BreakerState.HALF_OPEN, BreakerState.OPEN, len(failures), "probe failed"
        )
    if status.state is BreakerState.OPEN:  # a straggler that started before the breaker opened
        return _replace(status, failures=failures, failure_orgs=orgs), None
    distinct = config.min_orgs if ANY_ORG in orgs else len(set(orgs))
    if len(failures) >= config.failure_threshold and distinct >= config.min_orgs:
        opened = BreakerStatus(
            state=BreakerState.OPEN, failures=failures, failure_orgs=orgs, opened_at=now
        )
        reason = f"{len(failures)} failures within {config.window_s:g}s"
        if config.min_orgs > 1 and ANY_ORG not in orgs:
            reason += f" from {distinct} orgs"
        return opened, Transition(BreakerState.CLOSED, BreakerState.OPEN, len(failures), reason)
    return _replace(status, failures=failures, failure_orgs=orgs), None


def _orgs_of(status: BreakerStatus) -> tuple[str, ...]:
    """One org per failure whatever was stored (states written before orgs were kept)."""
    n = len(status.failures)
    orgs = status.failure_orgs[-n:] if n else ()
    return ("",) * (n - len(orgs)) + orgs


def on_success(
    status: BreakerStatus, now: float, config: BreakerConfig
) -> tuple[BreakerStatus, Transition | None]:
    """A success closes a half-open breaker; in closed or open it changes nothing (a straggler
    from before the breaker opened says nothing about the provider now)."""
    if status.state is not BreakerState.HALF_OPEN:
        return status, None
    closed = BreakerStatus(state=BreakerState.CLOSED)
    count = len(recent_failures(status, now, config))
    return closed, Transition(BreakerState.HALF_OPEN, BreakerState.CLOSED, count, "probe succeeded")


def _replace(status: BreakerStatus, **changes: object) -> BreakerStatus:
    return msgspec.structs.replace(status, **changes)


def to_event(provider: str, transition: Transition, now_ms: int) -> BreakerEventRecord:
    return BreakerEventRecord(
        event_id=str(uuid.uuid4()),
        provider=provider,
        created_at_ms=now_ms,
        from_state=transition.from_state.value,
        to_state=transition.to_state.value,
        failure_count=transition.failure_count,
        reason=transition.reason,
    )
