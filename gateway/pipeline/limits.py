"""Stage: rate limits, the org's monthly quota and the key's usage limits, in one Redis call;
the same call reads the exact response cache's entry when its key is known already (no
template), so a request makes one round trip to Redis before its provider call. On a Redis
Cluster the entry's key is in another slot than the org's: its ``GET`` leaves beside the
limits call, in the same turn of the event loop, and is taken once the request is admitted.

Fail open: when Redis cannot answer, the request runs, the answer carries
``Floopy-RateLimit-Status: unavailable``, and the limiter logs and counts it
(``RateLimiter.fail_open_count``, shown at ``GET /health``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.clients.ratelimiter import Gates, LimitsCall, limits_call
from gateway.clients.usage_counters import usage_expiry_s
from gateway.domain import Bucket
from gateway.pipeline.cache import plan_ahead
from gateway.policy.keys import ApiKey, Org, Usage, utc_day
from gateway.policy.limits import (
    admission_cost,
    policies_for,
    quota_gate,
    rate_limit_headers,
    refusal,
    scope_of,
)
from gateway.policy.ratelimit import (
    RateLimitPolicy,
    Segment,
    Unit,
    bucket_key,
    ratelimit_policy_header,
)
from shared.redis_client import org_tag

if TYPE_CHECKING:
    from gateway.clients.ratelimiter import RateLimiter
    from gateway.clients.response_cache import ResponseCache
    from gateway.clients.usage_counters import UsageCounters
    from gateway.context import RequestContext

__all__ = ["STATUS_HEADER", "LimitsDeps", "run"]

STATUS_HEADER = "Floopy-RateLimit-Status"


@dataclass(frozen=True, slots=True)
class LimitsDeps:
    usage_counters: UsageCounters
    limiter: RateLimiter
    cache: ResponseCache
    """The exact tier's entry is read during this stage (``cache.plan_ahead``)."""
    key_prefix: str
    segment_cap: int
    plans: dict[tuple[str, str, str, int], _Plan] = field(default_factory=dict)
    """This worker's plans (``_plan_for``), at most ``PLANS_MAX``."""


PLANS_MAX = 10_000
"""Plans kept per worker; past it they are dropped and rebuilt as requests come (a tenant
sending many distinct policy headers costs itself a rebuild each, not the others a leak)."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the stage asks Redis for requests of one key and org under one
    ``floopy-ratelimit-policy`` header on one UTC day: the same buckets, counters and script
    arguments for each, so a worker builds them once. It is kept by the key's and org's ids and
    used only for the very objects it was made from (the key cache hands out a new object when
    it reads a key again, an edited one included), so a changed key or org gets a new plan in
    its place. A plan with a segmented policy names its buckets after the request's user or
    property and is never kept."""

    api_key: ApiKey
    org: Org
    policies: tuple[tuple[str, RateLimitPolicy], ...]
    call: LimitsCall
    policy_header: str
    charges: tuple[Bucket, ...]
    """Token and cost buckets, charged after the response."""


async def run(ctx: RequestContext, deps: LimitsDeps) -> None:
    key, org = ctx.api_key, ctx.org
    if key is None or org is None:
        raise RuntimeError("limits run after auth")
    plan = _plan_for(ctx, key, org, deps)
    # the exact cache's entry, read in the same script (one node) or beside it (a cluster)
    peek = plan_ahead(ctx, deps.cache)
    prefetch = deps.cache.prefetch_exact(peek) if peek and deps.usage_counters.cluster else None
    admission = await deps.limiter.admit(plan.call, peek if prefetch is None else "")
    ahead = ctx.cache.ahead
    if peek and admission.admitted and not admission.fail_open and ahead is not None:
        if prefetch is None:
            ahead.fetched, ahead.entry = True, admission.peeked
        else:
            ahead.fetched, ahead.entry = await deps.cache.prefetched(prefetch)
    if admission.fail_open:
        ctx.response_headers[STATUS_HEADER] = "unavailable"
        return
    decisions = admission.decisions
    ctx.response_headers.update(
        rate_limit_headers(
            plan.policy_header, plan.policies, [(d.remaining, d.reset_ms) for d in decisions]
        )
    )
    d_tok, d_cost, m_tok, m_cost = admission.usage
    error = refusal(
        admission.gate,
        plan=org.plan,
        limits=key.limits,
        requests_this_month=admission.requests_this_month,
        usage=Usage(
            day_tokens=d_tok, day_cost_usd=d_cost, month_tokens=m_tok, month_cost_usd=m_cost
        ),
        denied_retry_ms=[
            (name, d.retry_after_ms)
            for (name, _), d in zip(plan.policies, decisions, strict=True)
            if not d.allowed
        ],
    )
    if error is not None:
        raise error
    ctx.after_response_charges = plan.charges


def _plan_for(ctx: RequestContext, key: ApiKey, org: Org, deps: LimitsDeps) -> _Plan:
    header, now_ms = ctx.meta.ratelimit_policy, ctx.created_at_ms
    memo = (key.key_id, org.org_id, header, utc_day(now_ms))
    plan = deps.plans.get(memo)
    if plan is not None and plan.api_key is key and plan.org is org:
        return plan
    plan = _build_plan(ctx, key, org, deps)
    if not any(b.segmented for b in plan.call.buckets):
        if len(deps.plans) >= PLANS_MAX:
            deps.plans.clear()
        deps.plans[memo] = plan  # a key or org read again replaces its own plan
    return plan


def _build_plan(ctx: RequestContext, key: ApiKey, org: Org, deps: LimitsDeps) -> _Plan:
    policies = policies_for(org, key, ctx.meta.ratelimit_policy)
    counters = deps.usage_counters
    org_name = org_tag(org.org_id, counters.cluster)  # one hash slot per org on a cluster
    buckets = [
        Bucket(
            bucket_key(
                deps.key_prefix,
                org_name,
                scope_of(name, key),
                policy,
                user_id=ctx.meta.user_id,
                properties=ctx.meta.properties,
            ),
            policy,
            admission_cost(policy),
            segmented=policy.segment is not Segment.GLOBAL,
        )
        for name, policy in policies
    ]
    now_ms = ctx.created_at_ms
    day, month = counters.usage_keys(key.key_id, now_ms, org_id=org.org_id)
    limits = key.limits
    gates = Gates(
        request_counter=counters.request_counter(org.org_id, now_ms),
        counter_expire_at_s=usage_expiry_s(now_ms, monthly=True),
        usage_day_key=day,
        usage_month_key=month,
        segment_set=counters.keys.rate_limit_segments(org.org_id),
        segment_cap=deps.segment_cap,
        monthly_quota=quota_gate(org.plan),
        daily_tokens=limits.daily_tokens,
        monthly_tokens=limits.monthly_tokens,
        daily_cost_usd=limits.daily_cost_usd,
        monthly_cost_usd=limits.monthly_cost_usd,
    )
    return _Plan(
        api_key=key,
        org=org,
        policies=tuple(policies),
        call=limits_call(buckets, gates),
        policy_header=ratelimit_policy_header(policies),
        charges=tuple(b for b in buckets if b.policy.unit is not Unit.REQUEST),
    )
