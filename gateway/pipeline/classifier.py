"""The firewall's classifier call, sent through the gateway's own routing and dispatch (the
"backend router"): routing rules, circuit breakers, retries, fallbacks, timeouts and prices
apply to it exactly as to a caller's request.

Invariants: the call runs in a context of its own (sharing the request's id, org and clock),
so it never touches the caller's provider, reply, attempts or usage; its whole time, retries
and fallbacks included, is bounded by ``firewall.timeout_s``; every way it can fail becomes a
``ClassifierFailedError`` with a one-word reason, never anything else.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.context import RequestContext
from gateway.domain import ChatRequest
from gateway.pipeline import dispatch
from gateway.policy.screening import ClassifierVerdict, answer_text, classifier_body, parse_verdict
from gateway.policy.usage import settle_usage
from shared.errors import ClassifierFailedError, ClientError, GatewayTimeoutError

if TYPE_CHECKING:
    from gateway.pipeline.dispatch import DispatchDeps
    from gateway.settings import FirewallSettings

__all__ = ["ClassifierCall", "classify"]


@dataclass(slots=True)
class ClassifierCall:
    """One classification: what was asked, who answered, what it cost, what it said."""

    model_ref: str
    provider: str = ""
    providers_tried: tuple[str, ...] = ()
    retries: int = 0
    latency_ms: float = 0.0
    tokens: int = 0
    cost_usd: float | None = None
    verdict: ClassifierVerdict | None = None


def _sub_context(ctx: RequestContext, body: bytes, model_ref: str) -> RequestContext:
    sub = RequestContext(
        headers={},
        request_id=ctx.request_id,
        created_at_ms=ctx.created_at_ms,
        started_ns=ctx.started_ns,
        org_id=ctx.org_id,
        api_key_id=ctx.api_key_id,
    )
    sub.body = body
    sub.chat = ChatRequest(raw=body, model=model_ref)
    return sub


def _failure(sub: RequestContext, exc: ClientError) -> ClassifierFailedError:
    if isinstance(exc, GatewayTimeoutError):
        return ClassifierFailedError(f"classifier timed out: {exc.message}", "timeout")
    if sub.targets and not sub.providers_tried:
        return ClassifierFailedError(f"classifier not called: {exc.message}", "breaker_open")
    if not sub.targets:
        return ClassifierFailedError(
            f"classifier model cannot be routed: {exc.message}", "no_route"
        )
    return ClassifierFailedError(f"classifier failed: {exc.code}: {exc.message}")


async def classify(
    call: ClassifierCall,
    ctx: RequestContext,
    settings: FirewallSettings,
    dispatcher: DispatchDeps,
    text: str,
) -> None:
    """Fill ``call`` (``verdict`` on success); raise ``ClassifierFailedError`` otherwise, with
    ``call`` still saying who was tried and for how long."""
    generation = dispatcher.generation
    sub = _sub_context(
        ctx, classifier_body(call.model_ref, text, settings.max_tokens), call.model_ref
    )
    start = time.perf_counter_ns()
    try:
        async with asyncio.timeout(settings.timeout_s):
            sub.targets = generation.upstreams.routing.targets(call.model_ref)
            await dispatch.run(sub, dispatcher)
    except TimeoutError:
        raise ClassifierFailedError(
            f"classifier gave no verdict within {settings.timeout_s} s", "timeout"
        ) from None
    except ClientError as exc:
        raise _failure(sub, exc) from None
    finally:
        call.latency_ms = (time.perf_counter_ns() - start) / 1e6
        call.provider = sub.provider_name
        call.providers_tried = tuple(sub.providers_tried)
        call.retries = sub.retries
    settled = settle_usage(
        sub.reply,
        sub.chat,
        generation.upstreams.prices,
        provider=sub.provider_name,
        model=sub.model_priced,
    )
    call.tokens, call.cost_usd = settled.usage.total_tokens, settled.cost_usd
    assert sub.reply is not None  # dispatch answered or raised
    call.verdict = parse_verdict(answer_text(sub.reply.body))
