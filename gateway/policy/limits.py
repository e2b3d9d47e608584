"""Which limits apply to a request, what they are called in headers, and which error a refusal
becomes (pure: no I/O; ``gateway.clients.ratelimiter`` asks Redis, ``pipeline.limits`` wires).

Up to three rate limits apply at once, each a GCRA bucket named by its scope:

- ``org``: the org's policy (default ``10000;w=60``), one bucket per org (or per segment);
- ``key``: the key's own policy, when it has one, one bucket per key;
- ``request``: the caller's ``floopy-ratelimit-policy`` header, buckets shared by every request of
  the org that sends the same policy (so ``s=user`` limits each end user across the org's keys).

Request-unit buckets are charged one unit on admission. Token- and cost-unit buckets are only
checked on admission (the request runs while the bucket is not in debt) and charged after the
response, from the record's tokens and cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from gateway.policy.keys import (
    ApiKey,
    KeyLimits,
    Org,
    Plan,
    Usage,
    check_monthly_quota,
    check_usage,
)
from gateway.policy.ratelimit import (
    RateLimitPolicy,
    Unit,
    cost_units,
    parse_policy,
    ratelimit_header,
    retry_after_header,
)
from shared.errors import (
    ClientError,
    MonthlyLimitExceededError,
    RateLimitExceededError,
    UsageLimitExceededError,
)

__all__ = [
    "GATE_MONTHLY",
    "GATE_NONE",
    "GATE_SEGMENTS",
    "GATE_USAGE",
    "admission_cost",
    "after_response_cost",
    "cached_policy",
    "policies_for",
    "quota_gate",
    "rate_limit_headers",
    "refusal",
]

GATE_NONE, GATE_MONTHLY, GATE_USAGE, GATE_SEGMENTS = 0, 1, 2, 3
"""What the limits script reports (``gateway.clients.ratelimiter.Gate`` uses the same values)."""


@lru_cache(maxsize=4096)
def cached_policy(text: str) -> RateLimitPolicy:
    """Policies are a handful of strings repeated on every request: parse each once. A bad one
    raises (and exceptions are not cached, so it raises every time)."""
    return parse_policy(text)


def policies_for(org: Org, key: ApiKey, header: str) -> list[tuple[str, RateLimitPolicy]]:
    policies = [("org", cached_policy(org.rate_limit_policy))]
    if key.limits.rate_limit_policy:
        policies.append(("key", cached_policy(key.limits.rate_limit_policy)))
    if header:
        policies.append(("request", cached_policy(header.strip())))
    return policies


def scope_of(name: str, key: ApiKey) -> str:
    """The bucket scope: the key's own limit is per key, the others are shared by the org."""
    return f"key:{key.key_id}" if name == "key" else name


def admission_cost(policy: RateLimitPolicy) -> int:
    return 1 if policy.unit is Unit.REQUEST else 0


def after_response_cost(policy: RateLimitPolicy, tokens: int, cost_usd: float | None) -> int:
    """Units charged once the answer is known; 0 for request-unit buckets (charged already) and
    for an unknown cost (logged as unknown elsewhere, not guessed here)."""
    if policy.unit is Unit.TOKEN:
        return max(0, tokens)
    if policy.unit is Unit.COST and cost_usd is not None:
        return cost_units(cost_usd)
    return 0


def quota_gate(plan: Plan) -> int | None:
    """The monthly quota the limits script refuses at; None (count only) with overage."""
    return None if plan.overage_allowed else plan.monthly_requests


def rate_limit_headers(
    policy_header: str,
    policies: Sequence[tuple[str, RateLimitPolicy]],
    remaining_and_reset_ms: Sequence[tuple[int, int]],
) -> dict[str, str]:
    """``policy_header``: ``ratelimit_policy_header(policies)``, the same for every request under
    these policies (the limits stage makes it once per plan)."""
    states = [
        (name, remaining, reset_ms)
        for (name, _), (remaining, reset_ms) in zip(policies, remaining_and_reset_ms, strict=True)
    ]
    return {"RateLimit-Policy": policy_header, "RateLimit": ratelimit_header(states)}


def _gate_refusal(
    gate: int, plan: Plan, limits: KeyLimits, requests_this_month: int, usage: Usage
) -> ClientError:
    if gate == GATE_MONTHLY:
        try:
            check_monthly_quota(plan, requests_this_month + 1)
        except MonthlyLimitExceededError as exc:
            return exc
        return MonthlyLimitExceededError("monthly request quota used up")
    if gate == GATE_USAGE:
        try:
            check_usage(limits, usage)
        except UsageLimitExceededError as exc:
            return exc
        return UsageLimitExceededError("usage limit reached for this API key")
    return RateLimitExceededError(
        "too many distinct segment buckets (floopy-user-id or property values) live for this "
        "organization; new values are refused until older buckets refill and expire",
        details={"limit": "segments", "retry_after_s": 1},
        headers={"Retry-After": "1"},
    )


def refusal(
    gate: int,
    *,
    plan: Plan,
    limits: KeyLimits,
    requests_this_month: int,
    usage: Usage,
    denied_retry_ms: Sequence[tuple[str, int]],
) -> ClientError | None:
    """The error for a refused request, or None when it may run. Quota and usage refusals win
    over rate limits: waiting ``Retry-After`` would not help them."""
    if gate != GATE_NONE:
        return _gate_refusal(gate, plan, limits, requests_this_month, usage)
    if not denied_retry_ms:
        return None
    name, retry_ms = max(denied_retry_ms, key=lambda item: item[1])
    retry = retry_after_header(retry_ms)
    return RateLimitExceededError(
        f"rate limit exceeded ({name} limit); retry after {retry} s",
        details={"limit": name, "retry_after_s": int(retry)},
        headers={"Retry-After": retry},
    )
