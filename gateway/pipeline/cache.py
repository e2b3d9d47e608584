"""Stage: the response cache. Looks the request up tier by tier (exact → semantic → advanced,
the org's tiers only) and answers on the first hit; after a miss's response, ``store_after``
writes the answer to every tier that was looked up, off the hot path.

Invariants:
- Runs after limits and the template stage and before routing: a hit costs no provider call and
  no breaker probe, and still counts against rate limits and the monthly quota.
- Fails open: a store or the embedder that cannot answer makes that tier a miss, noted in the
  record's ``cache_error``, logged and counted (``GET /health`` → ``cache``); never a 5xx.
- Each tier looked up is a child span (``cache.exact`` …), the embedding call inside it too.
- Only a complete answer is stored: a 200 with a body, or a stream that ended with ``[DONE]``
  and no error (never a cut, errored or partial stream).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.clients.providers.base import UpstreamStream
from gateway.clients.response_cache import CacheWrite
from gateway.domain import StageTiming, TokenUsage, UpstreamReply
from gateway.policy.cache import (
    CachedAnswer,
    CacheStatus,
    CacheTier,
    PlannedLookup,
    cache_headers,
    plan_cache,
)
from gateway.policy.cache_key import request_keys
from gateway.policy.cache_replay import assemble_stream, replay_events
from gateway.policy.firewall import SkipReason, Verdict, decide, plan_screening, thresholds_for
from gateway.policy.json_body import decode_json
from gateway.policy.openai_wire import observe_event
from gateway.policy.sse import SSESplitter

if TYPE_CHECKING:
    from gateway.clients.embeddings import Embedder
    from gateway.clients.response_cache import Lookup, ResponseCache
    from gateway.context import RequestContext
    from gateway.policy.usage import Settled

__all__ = ["CacheDeps", "ReplayStream", "child_span", "plan_ahead", "run", "store_after"]

log = logging.getLogger(__name__)

CHAT = "/v1/chat/completions"
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode


@dataclass(frozen=True, slots=True)
class CacheDeps:
    cache: ResponseCache
    embedder: Embedder
    embed_max_chars: int
    """A longer text is not embedded (the model would not read it all): no vector tier."""
    firewall_model: str
    """The firewall's default classifier (whether a hit may skip screening)."""


def child_span(
    ctx: RequestContext, name: str, start_ns: int, status: str, **attributes: str
) -> float:
    """Record a child span of a stage that started at ``start_ns``; returns its duration (ms)."""
    duration = (time.perf_counter_ns() - start_ns) / 1e6
    ctx.child_spans.append(
        StageTiming(
            name,
            (start_ns - ctx.started_ns) / 1e6,
            duration,
            status,
            {"parent": "cache", **attributes},
        )
    )
    return duration


def _plan(ctx: RequestContext) -> PlannedLookup:
    key, org, chat = ctx.api_key, ctx.org, ctx.chat
    if key is None or org is None or chat is None:
        raise RuntimeError("the cache stage runs after auth, intake and template")
    plan = plan_cache(
        org.cache,
        ctx.meta.cache_controls(),
        key_switch=key.switches.cache,
        now_ms=ctx.created_at_ms,
        exact_only=ctx.endpoint != CHAT,
    )
    if not plan.active:
        return PlannedLookup(plan, None)
    if chat.fields is None:  # kept: the firewall and usage estimation read it too
        chat.fields = decode_json(_decode_object, chat.raw)
    keys = request_keys(
        chat.fields,
        endpoint=ctx.endpoint,
        org_id=ctx.org_id,
        seed=plan.seed,
        vectors=plan.tiers != (CacheTier.EXACT,),
    )
    return PlannedLookup(plan, keys)


def plan_ahead(ctx: RequestContext, cache: ResponseCache) -> str:
    """For the limits stage: the exact tier's Redis key, to be read during the limits' round
    trip (in their script on one node; beside it on a cluster, where the key is in another
    slot), with the plan and keys kept for this stage; "" when the lookup cannot be known yet (a
    template renders the body after the limits) or must not be made there (no exact tier; Redis
    failed a moment ago: the stage notes the skipped tier as it always does)."""
    if ctx.meta.prompt_id or ctx.chat is None or cache.redis_down():
        return ""
    ahead = _plan(ctx)
    if ahead.keys is None or CacheTier.EXACT not in ahead.plan.tiers:
        return ""
    ctx.cache.ahead = ahead
    return cache.exact.key(ctx.org_id, ahead.keys.exact)


async def run(ctx: RequestContext, deps: CacheDeps) -> ReplayStream | None:
    """A hit answers (``ctx.answered``): whole, in ``ctx.reply``, or streamed, as the returned
    replay for the caller to relay."""
    outcome = ctx.cache
    ahead = outcome.ahead or _plan(ctx)
    plan = ahead.plan
    outcome.plan, outcome.status = plan, plan.status
    ctx.response_headers.update(cache_headers(plan.status))
    if not plan.active:
        return None
    chat = ctx.chat
    assert chat is not None  # _plan checked it
    outcome.keys = ahead.keys
    for tier in plan.tiers:
        found = await _look_up(ctx, deps, tier)
        if found is not None:
            replay = _answer(ctx, deps, found)
            if ctx.answered:
                return replay
    if chat.stream:
        outcome.stream_events = []
    return None


async def _look_up(ctx: RequestContext, deps: CacheDeps, tier: CacheTier) -> Lookup | None:
    start = time.perf_counter_ns()
    status, found = "miss", None
    try:
        found = await _LOOKUPS[tier](ctx, deps)
        status = "hit" if found is not None else "miss"
    except deps.cache.fail_open_errors as exc:
        status = "error"
        deps.cache.count_fail_open(tier, exc)
        ctx.cache.fail_open(tier, f"{type(exc).__name__}: {exc}"[:200])
    finally:
        ahead = ctx.cache.ahead
        by_limits = tier is CacheTier.EXACT and ahead is not None and ahead.fetched
        read = {"read_by": "rate_limit"} if by_limits else {}
        ctx.cache.lookup_ms[tier.value] = child_span(
            ctx,
            f"cache.{tier.value}",
            start,
            "ok" if status != "error" else "error",
            result=status,
            **read,
        )
    return found


async def _exact(ctx: RequestContext, deps: CacheDeps) -> Lookup | None:
    plan, keys, ahead = ctx.cache.plan, ctx.cache.keys, ctx.cache.ahead
    assert plan is not None and keys is not None
    if ahead is not None and ahead.fetched:  # read by the limits script
        return deps.cache.exact_entry(ahead.entry, plan.min_created_at_ms)
    return await deps.cache.look_up_exact(ctx.org_id, keys.exact, plan.min_created_at_ms)


async def _by_vector(ctx: RequestContext, deps: CacheDeps, tier: CacheTier) -> Lookup | None:
    """Semantic (the whole prompt's text) or advanced (the last user turn's)."""
    plan, keys = ctx.cache.plan, ctx.cache.keys
    assert plan is not None and keys is not None
    text = keys.prompt_text if tier is CacheTier.SEMANTIC else keys.last_turn
    if deps.cache.semantic is None or not text or len(text) > deps.embed_max_chars:
        return None  # nothing to embed, or more than the model reads: no vector, no point
    vector = await _embed(ctx, deps, tier, text)
    return await deps.cache.look_up_vector(
        tier, vector, org_id=ctx.org_id, model=ctx.model_requested, plan=plan, keys=keys
    )


async def _embed(ctx: RequestContext, deps: CacheDeps, tier: CacheTier, text: str) -> list[float]:
    """One embedding per distinct text (a one-message prompt is also its last turn); the
    call is a child span with what it cost."""
    vectors, keys = ctx.cache.vectors, ctx.cache.keys
    assert keys is not None
    for other, vector in vectors.items():
        if (keys.prompt_text if other is CacheTier.SEMANTIC else keys.last_turn) == text:
            vectors[tier] = vector
            return vector
    start = time.perf_counter_ns()
    try:
        embedded = await deps.embedder.embed([text])
    except BaseException:
        child_span(ctx, "cache.embed", start, "error", model_ref=deps.embedder.name)
        raise
    child_span(
        ctx,
        "cache.embed",
        start,
        "ok",
        model_ref=embedded.model_ref,
        tokens=str(embedded.tokens),
        cost_usd="" if embedded.cost_usd is None else f"{embedded.cost_usd:.8f}",
    )
    vectors[tier] = embedded.vectors[0]
    return embedded.vectors[0]


async def _semantic(ctx: RequestContext, deps: CacheDeps) -> Lookup | None:
    return await _by_vector(ctx, deps, CacheTier.SEMANTIC)


async def _advanced(ctx: RequestContext, deps: CacheDeps) -> Lookup | None:
    return await _by_vector(ctx, deps, CacheTier.ADVANCED)


_LOOKUPS: dict[CacheTier, Callable[[RequestContext, CacheDeps], Awaitable[Lookup | None]]] = {
    CacheTier.EXACT: _exact,
    CacheTier.SEMANTIC: _semantic,
    CacheTier.ADVANCED: _advanced,
}


def _answer(ctx: RequestContext, deps: CacheDeps, found: Lookup) -> ReplayStream | None:
    """Serve a hit (sets ``ctx.answered``; a streamed hit returns its replay). Not served when
    the stored entry cannot be replayed for this request, or when this request must be
    screened and the stored one's score would not let it through."""
    chat, answer = ctx.chat, found.answer
    assert chat is not None
    if not _screening_allows(ctx, deps, answer):
        ctx.cache.fail_open(found.tier, "hit not served: this request's firewall settings")
        return None
    usage = TokenUsage(
        answer.prompt_tokens,
        answer.completion_tokens,
        answer.total_tokens,
        answer.cached_prompt_tokens,
    )
    replay = None
    if chat.stream:
        events = replay_events(answer.body, include_usage=chat.client_wants_usage)
        if events is None:
            return None
        replay = ReplayStream(events, answer.model, usage)
        ctx.stream = replay.observed
    else:
        ctx.reply = UpstreamReply(200, answer.body, "application/json", answer.model, usage)
        ctx.response_body = answer.body
    ctx.status_code = 200
    outcome = ctx.cache
    outcome.status, outcome.tier, outcome.similarity, outcome.hit = (
        CacheStatus.HIT,
        found.tier,
        found.similarity,
        answer,
    )
    ctx.response_headers.update(cache_headers(CacheStatus.HIT, found.tier, found.similarity))
    ctx.answered = True
    return replay


def _screening_allows(ctx: RequestContext, deps: CacheDeps, answer: CachedAnswer) -> bool:
    """The firewall runs after the cache, so a hit is never screened itself. It may be served
    when this request would not be screened at all, or when the score its stored request got
    passes under this request's thresholds (a key may block lower than the key that stored it);
    the firewall's record fields then say so."""
    org, key = ctx.org, ctx.api_key
    assert org is not None and key is not None
    plan = plan_screening(
        org.firewall,
        default_model=deps.firewall_model,
        key_switch=key.switches.firewall,
        header_enabled=ctx.meta.firewall_enabled,
    )
    if isinstance(plan, SkipReason):
        return True
    if answer.screened_score is None:
        return False
    limits = key.limits
    thresholds = thresholds_for(
        org.firewall, limits.firewall_flag_threshold, limits.firewall_block_threshold
    )
    verdict = decide(answer.screened_score, thresholds)
    if verdict is Verdict.BLOCK:
        return False
    outcome = ctx.firewall
    outcome.verdict, outcome.score = verdict, answer.screened_score
    outcome.reason = "answered from the response cache: the stored request's score"
    return True


class ReplayStream(UpstreamStream):
    """A streamed hit: the stored completion's events, sent as they were built."""

    def __init__(self, events: list[bytes], model: str, usage: TokenUsage) -> None:
        super().__init__(200)
        self._events = events
        self.observed.model = model
        self.observed.usage = usage

    async def chunks(self) -> AsyncIterator[bytes]:
        """Observed like an upstream's events, so the record has the text it adds up to."""
        self.observed.first_chunk_ns = time.perf_counter_ns()
        for event in self._events:
            observe_event(self.observed, event, forward_usage_chunk=True)
            yield event

    async def aclose(self) -> None:
        self._events = []


def store_after(ctx: RequestContext, cache: ResponseCache, settled: Settled) -> None:
    """After a miss's response: schedule the write of its answer to the tiers looked up."""
    outcome = ctx.cache
    plan, keys = outcome.plan, outcome.keys
    if outcome.status is not CacheStatus.MISS or plan is None or keys is None:
        return
    body = _storable_body(ctx, settled)
    if body is None:
        return
    usage = settled.usage
    answer = CachedAnswer(
        body=body,
        model=ctx.model_used,
        provider=ctx.provider_name,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens,
        cost_usd=settled.cost_usd,
        created_at_ms=ctx.created_at_ms,
        screened_score=_screened_score(ctx),
    )
    cache.schedule_write(
        CacheWrite(ctx.org_id, ctx.model_requested, plan, keys, outcome.vectors, answer)
    )


def _screened_score(ctx: RequestContext) -> float | None:
    firewall = ctx.firewall
    screened = firewall.verdict in (Verdict.PASS, Verdict.FLAG)
    return firewall.score if screened else None


def _storable_body(ctx: RequestContext, settled: Settled) -> bytes | None:
    if ctx.error is not None or ctx.status_code != 200:
        return None
    if ctx.reply is not None:
        return ctx.reply.body if ctx.reply.status_code == 200 else None
    stream, events = ctx.stream, ctx.cache.stream_events
    if stream is None or events is None or not stream.completed or ctx.stream_error:
        return None
    usage = settled.usage
    return assemble_stream(
        SSESplitter().feed(b"".join(events)),
        {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
    )
