"""Stage: the LLM firewall. After the cache (a hit was screened when it was stored), before
routing, so a blocked prompt never costs a provider call.

1. ``plan_screening``: the org's switch, the key's switch, the classifier model, and the
   per-request ``floopy-llm-security-enabled`` header (if the org honours it). A skip is
   recorded as ``skipped`` with its reason.
2. The verdict cache (Qdrant): the org's earlier *unsafe* verdicts whose score blocks under this
   request's thresholds are looked up, first by the screened text's hash (an exact repeat, no
   embedding), then by its embedding; a match at or above ``firewall.cache_similarity`` blocks
   at once (``verdict_source = cache``). A cache that fails
   is logged, counted and recorded (``reason``), and the classifier decides alone.
3. The classifier, through routing and dispatch (``gateway.pipeline.classifier``); its score
   decides ``block`` (400 PROMPT_THREAT_DETECTED), ``flag`` or ``pass``; a flagged or blocked
   text is stored in the verdict cache. A classifier failure is ``error`` and the org's fail
   policy: open (go on, logged and counted) or closed (503 FIREWALL_UNAVAILABLE).

Each of the two lookups is a child span of the ``firewall`` span.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.domain import StageTiming
from gateway.pipeline.classifier import ClassifierCall, classify
from gateway.policy.firewall import (
    FirewallOutcome,
    Screen,
    SkipReason,
    Thresholds,
    Verdict,
    decide,
    plan_screening,
    thresholds_for,
)
from gateway.policy.screening import screened_text
from shared.errors import (
    ClassifierFailedError,
    DependencyError,
    FirewallUnavailableError,
    PromptThreatError,
)

if TYPE_CHECKING:
    from gateway.clients.verdict_cache import VerdictCache
    from gateway.context import RequestContext
    from gateway.pipeline.dispatch import DispatchDeps
    from gateway.settings import FirewallSettings
    from shared.metrics import CounterSet

__all__ = ["CACHE_SPAN", "CLASSIFIER_SPAN", "FirewallDeps", "run"]

log = logging.getLogger(__name__)

CACHE_SPAN = "firewall.verdict_cache"
CLASSIFIER_SPAN = "firewall.classifier"


@dataclass(frozen=True, slots=True)
class FirewallDeps:
    settings: FirewallSettings
    verdict_cache: VerdictCache
    dispatcher: DispatchDeps
    """The classifier is called through the gateway's own routing and dispatch."""
    counters: CounterSet
    """``firewall_classifier`` and ``firewall_verdict_cache`` failures."""


class _Messages(msgspec.Struct):
    messages: list[Any] = []


_decode_messages = msgspec.json.Decoder(_Messages).decode


def _messages(ctx: RequestContext) -> list[Any]:
    chat = ctx.chat
    if chat is None:
        raise RuntimeError("the firewall runs after intake and template")
    if chat.fields is not None:
        found = chat.fields.get("messages")
        return found if isinstance(found, list) else []
    return _decode_messages(chat.raw).messages


def _plan(ctx: RequestContext, deps: FirewallDeps) -> Screen | SkipReason:
    if ctx.org is None or ctx.api_key is None:
        raise RuntimeError("the firewall runs after auth")
    return plan_screening(
        ctx.org.firewall,
        default_model=deps.settings.model,
        key_switch=ctx.api_key.switches.firewall,
        header_enabled=ctx.meta.firewall_enabled,
    )


async def run(ctx: RequestContext, deps: FirewallDeps) -> None:
    outcome = ctx.firewall
    plan = _plan(ctx, deps)
    if isinstance(plan, SkipReason):
        outcome.verdict, outcome.reason = Verdict.SKIPPED, plan.value
        return
    outcome.model_ref, outcome.reason = plan.model_ref, plan.note
    text = screened_text(_messages(ctx), deps.settings.max_chars)
    if not text:
        outcome.verdict, outcome.reason = Verdict.SKIPPED, "no_text"
        return
    assert ctx.org is not None and ctx.api_key is not None  # _plan checked
    limits = ctx.api_key.limits
    thresholds = thresholds_for(
        ctx.org.firewall, limits.firewall_flag_threshold, limits.firewall_block_threshold
    )
    cache = deps.verdict_cache if deps.settings.verdict_cache else None
    vector = await _cached_verdict(ctx, deps, cache, text, thresholds) if cache else None
    if outcome.verdict == Verdict.BLOCK:
        raise _blocked(outcome, thresholds)
    await _classify(ctx, deps, plan.model_ref, text)
    if outcome.verdict == Verdict.ERROR:
        return
    assert outcome.score is not None
    outcome.verdict = decide(outcome.score, thresholds)
    if cache is not None and vector is not None and outcome.verdict != Verdict.PASS:
        await _store(ctx, deps, cache, text, vector)
    if outcome.verdict == Verdict.BLOCK:
        raise _blocked(outcome, thresholds)


def _blocked(outcome: FirewallOutcome, thresholds: Thresholds) -> PromptThreatError:
    return PromptThreatError(
        "the LLM firewall blocked this prompt; review its content, ask for a higher block "
        "threshold, or send floopy-llm-security-enabled: false if your org allows it",
        details={
            "score": outcome.score,
            "threshold": thresholds.block,
            "categories": list(outcome.categories),
            "verdict_source": outcome.source,
        },
    )


def _child_span(
    ctx: RequestContext, name: str, start_ns: int, status: str, attributes: dict[str, str]
) -> None:
    ctx.child_spans.append(
        StageTiming(
            name,
            (start_ns - ctx.started_ns) / 1e6,
            (time.perf_counter_ns() - start_ns) / 1e6,
            status,
            attributes={"parent": "firewall", **attributes},
        )
    )


async def _cached_verdict(
    ctx: RequestContext, deps: FirewallDeps, cache: VerdictCache, text: str, thresholds: Thresholds
) -> list[float] | None:
    """Look the text up (by its hash, then by similarity); on a hit fill the outcome as a block.
    Returns the text's embedding (to store a new unsafe verdict under), or None when there is
    none (an exact hit needs none; a failed cache has none)."""
    outcome = ctx.firewall
    start = time.perf_counter_ns()
    vector: list[float] | None = None
    try:
        hit = await cache.exact(ctx.org_id, text, min_score=thresholds.block)
        match = "exact" if hit else "none"
        if hit is None:
            vector = await cache.embed(text)
            hit = await cache.lookup(ctx.org_id, vector, min_score=thresholds.block)
            match = "similar" if hit else "none"
    except DependencyError as exc:
        deps.counters.inc("firewall_verdict_cache")
        log.warning("request %s: verdict cache unavailable (%s)", ctx.request_id, exc)
        note = f"verdict cache unavailable: {exc}"
        outcome.reason = f"{outcome.reason}; {note}" if outcome.reason else note
        _child_span(ctx, CACHE_SPAN, start, "error", {"error": type(exc).__name__})
        return None
    attributes = {"hit": match}
    if hit is not None:
        attributes["similarity"] = f"{hit.similarity:.4f}"
        outcome.verdict, outcome.source = Verdict.BLOCK, "cache"
        outcome.score, outcome.categories = hit.score, hit.categories
        outcome.model_ref = hit.model_ref
    _child_span(ctx, CACHE_SPAN, start, "ok", attributes)
    return vector


async def _store(
    ctx: RequestContext, deps: FirewallDeps, cache: VerdictCache, text: str, vector: list[float]
) -> None:
    outcome = ctx.firewall
    assert outcome.score is not None
    try:
        await cache.save(
            ctx.org_id,
            text,
            vector,
            score=outcome.score,
            categories=outcome.categories,
            model_ref=outcome.model_ref,
        )
    except DependencyError as exc:
        deps.counters.inc("firewall_verdict_cache")
        log.warning("request %s: could not store a verdict (%s)", ctx.request_id, exc)


async def _classify(ctx: RequestContext, deps: FirewallDeps, model_ref: str, text: str) -> None:
    outcome = ctx.firewall
    call = ClassifierCall(model_ref)
    start = time.perf_counter_ns()
    try:
        await classify(call, ctx, deps.settings, deps.dispatcher, text)
    except ClassifierFailedError as exc:
        _record_call(outcome, call)
        _child_span(ctx, CLASSIFIER_SPAN, start, "error", _call_attributes(call, exc.reason))
        deps.counters.inc("firewall_classifier")
        outcome.verdict, outcome.reason = Verdict.ERROR, exc.reason
        policy = ctx.org.firewall.fail_policy if ctx.org else "open"
        log.warning(
            "request %s: firewall classifier failed (%s: %s); failing %s",
            ctx.request_id,
            exc.reason,
            exc,
            policy,
        )
        if policy == "closed":
            raise FirewallUnavailableError(
                f"the LLM firewall could not screen this prompt ({exc.reason}) and this "
                "organization's firewall fails closed; retry shortly",
                details={"reason": exc.reason},
            ) from None
        return
    _record_call(outcome, call)
    assert call.verdict is not None
    outcome.source = "classifier"
    outcome.score, outcome.categories = call.verdict.score, call.verdict.categories
    _child_span(ctx, CLASSIFIER_SPAN, start, "ok", _call_attributes(call, ""))


def _record_call(outcome: FirewallOutcome, call: ClassifierCall) -> None:
    outcome.backend = call.provider
    outcome.latency_ms = call.latency_ms
    outcome.tokens, outcome.cost_usd = call.tokens, call.cost_usd


def _call_attributes(call: ClassifierCall, failure: str) -> dict[str, str]:
    attributes = {
        "model_ref": call.model_ref,
        "provider": call.provider,
        "providers_tried": ",".join(call.providers_tried),
        "retries": str(call.retries),
    }
    if failure:
        attributes["error"] = failure
    if call.verdict is not None:
        attributes["score"] = f"{call.verdict.score:.4f}"
    return attributes
