"""Stage: send the request to its routing targets in order until one answers.

Invariants:
- Per target: the circuit breaker is asked first and an open one is skipped; then up to
  ``retry.attempts`` attempts with exponential backoff (tenacity) while the failure is worth
  repeating (5xx, 429, connection) and the breaker stays closed. A half-open probe gets one.
- The next target is tried after a retryable failure, a timeout or a rejected provider key; a
  client mistake reported by the provider (400/404/422) is the answer and nothing else is tried.
- Streams fall back only before the caller has any byte: ``open_stream`` returns at the status
  line, and from then on the relay owns the stream (``run`` returns it to the route; the
  context keeps only what is seen of it).
- Every attempt becomes a ``provider_attempt`` span (provider, model, outcome); every failure
  that is the provider's counts against its breaker.
- All targets failed: the last failure is raised as it was (504 GATEWAY_TIMEOUT after a timeout,
  else 502 PROVIDER_ERROR with the provider's own error), with ``providers_tried`` added.
  No target could be tried (every breaker open): 502 PROVIDER_ERROR saying so, with
  ``Retry-After`` set to the breakers' cool-down.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from gateway.domain import ChatRequest, StageTiming
from gateway.pipeline.intake import EMBEDDINGS
from gateway.policy.breaker import Admission
from gateway.policy.routing import (
    Outcome,
    Target,
    classify_failure,
    counts_against_breaker,
    retryable,
)
from shared.backoff import Backoff
from shared.errors import ClientError, ProviderError

if TYPE_CHECKING:
    from gateway.clients.providers.base import ProviderClient, UpstreamStream
    from gateway.context import RequestContext
    from gateway.generation import Generation
    from gateway.settings import RetrySettings

__all__ = ["ATTEMPT_SPAN", "DispatchDeps", "run"]

ATTEMPT_SPAN = "provider_attempt"


@dataclass(frozen=True, slots=True)
class DispatchDeps:
    generation: Generation
    retry: RetrySettings
    breaker_cooldown_s: float
    """An open breaker's cool-down: the ``Retry-After`` when every breaker is open."""


async def run(ctx: RequestContext, deps: DispatchDeps) -> UpstreamStream | None:
    """The open stream of a streamed answer, for the caller to relay and close; None when the
    answer is whole (``ctx.reply``)."""
    if ctx.chat is None or not ctx.targets:
        raise RuntimeError("dispatch runs after intake and routing")
    last: ClientError | None = None
    for target in ctx.targets:
        upstreams = deps.generation.upstreams
        admission = await upstreams.breakers.admit(target.provider, ctx.org_id)
        provider = upstreams.providers.get(target.provider)
        if admission is Admission.REJECT or provider is None:  # None: removed since routing
            _span(ctx, target, time.perf_counter_ns(), Outcome.SKIPPED)
            continue
        ctx.provider_name = provider.name
        ctx.providers_tried.append(target.provider)
        try:
            return await _try_target(
                _TargetRun(ctx, deps, target, provider), probe=admission is Admission.PROBE
            )
        except ClientError as exc:
            if classify_failure(exc) is Outcome.CLIENT_ERROR:
                raise
            last = exc
    if last is None:
        raise ProviderError(
            f"no provider for model {ctx.model_requested!r} is available: "
            "every circuit breaker is open",
            details={"targets": [str(t) for t in ctx.targets]},
            # at the latest then, an open breaker lets a probe through
            headers={"Retry-After": str(math.ceil(deps.breaker_cooldown_s))},
        )
    last.details["providers_tried"] = list(ctx.providers_tried)
    raise last


async def _try_target(run: _TargetRun, *, probe: bool) -> UpstreamStream | None:
    deps, target, org_id = run.deps, run.target, run.ctx.org_id
    breakers = deps.generation.upstreams.breakers
    try:
        await run.run(1 if probe else deps.retry.attempts)
    except ClientError as exc:
        if probe and classify_failure(exc) is Outcome.CLIENT_ERROR:
            await breakers.probe_succeeded(target.provider, org_id)  # it is up
        raise
    if probe:
        await breakers.probe_succeeded(target.provider, org_id)
    return run.stream


class _TargetRun:
    """The attempts at one target; each failure is counted by the breaker, whose verdict
    decides whether another attempt is worth making."""

    def __init__(
        self, ctx: RequestContext, deps: DispatchDeps, target: Target, provider: ProviderClient
    ) -> None:
        if ctx.chat is None:
            raise RuntimeError("a target is tried after intake")
        self.ctx, self.deps, self.target, self.provider = ctx, deps, target, provider
        self.request = ctx.chat.for_model(target.model)
        self.breaker_open = False
        self.stream: UpstreamStream | None = None
        """The stream the successful attempt opened (a streamed request)."""

    def worth_repeating(self, exc: BaseException) -> bool:
        return retryable(exc) and not self.breaker_open

    async def once(self) -> None:
        try:
            self.stream = await _attempt(self.ctx, self.provider, self.target, self.request)
        except ClientError as exc:
            if counts_against_breaker(classify_failure(exc)):
                answered = exc.details.get("provider_status") is not None
                self.breaker_open = await self.deps.generation.upstreams.breakers.failure(
                    self.target.provider, self.ctx.org_id, answered=answered
                )
            raise

    async def run(self, attempts: int) -> None:
        """The first attempt runs bare: tenacity's per-call bookkeeping (≈60 objects in
        reference cycles, left to the GC) is paid only by requests whose first attempt failed.
        The waits are one ``shared.backoff`` schedule all the same: ``backoff_s`` before the
        second attempt, doubling after each, capped at ``backoff_max_s``."""
        try:
            await self.once()
            return
        except ClientError as exc:
            if attempts == 1 or not self.worth_repeating(exc):
                raise
        retry = self.deps.retry
        backoff = Backoff(retry.backoff_s, retry.backoff_max_s)
        await asyncio.sleep(backoff.delay_s(1))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts - 1),
            wait=backoff.wait(after=1),
            retry=retry_if_exception(self.worth_repeating),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                self.ctx.retries += 1
                await self.once()


async def _attempt(
    ctx: RequestContext, provider: ProviderClient, target: Target, request: ChatRequest
) -> UpstreamStream | None:
    start = time.perf_counter_ns()
    outcome = Outcome.OK
    try:
        if request.stream:
            stream = await provider.open_stream(request)
            ctx.stream = stream.observed
            ctx.status_code = stream.status_code
            return stream
        call = provider.embed if ctx.endpoint == EMBEDDINGS else provider.complete
        ctx.reply = await call(request)
        ctx.status_code = ctx.reply.status_code
        ctx.response_body = ctx.reply.body
        return None
    except ClientError as exc:
        outcome = classify_failure(exc)
        raise
    finally:
        _span(ctx, target, start, outcome)


def _span(ctx: RequestContext, target: Target, start_ns: int, outcome: Outcome) -> None:
    end = time.perf_counter_ns()
    ctx.attempts.append(
        StageTiming(
            ATTEMPT_SPAN,
            (start_ns - ctx.started_ns) / 1e6,
            (end - start_ns) / 1e6,
            outcome.value,
            attributes={
                "provider": target.provider,
                "model": target.model,
                "outcome": outcome.value,
                "attempt": str(len(ctx.attempts) + 1),
            },
        )
    )
