"""The order a request meets the stages, in one place, and the loop that times each of them.

A stage reads and fills the context, answers (sets ``ctx.answered``: a cache hit; the stages
after it do not run), or raises a ``ClientError``. A stage that answers with a stream returns
it (dispatch, a streamed cache hit): an open stream is not data, so it is not on the context,
and the caller of ``run_stages`` relays and closes it. The timing of every stage
that ran (even one that failed) becomes a span and a ``stage_latency_ms`` entry.

Each stage is handed only what it uses (``deps``: a store, the routing generation, or a small
frozen record of its own), bound once per worker when the services are opened; the loop passes
it along, so binding costs nothing per request.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from gateway.domain import StageTiming
from gateway.pipeline import auth, cache, dispatch, firewall, intake, limits, routing, template
from gateway.pipeline.cache import CacheDeps
from gateway.pipeline.dispatch import DispatchDeps
from gateway.pipeline.firewall import FirewallDeps
from gateway.pipeline.limits import LimitsDeps
from shared.errors import ClientError

if TYPE_CHECKING:
    from gateway.clients.providers.base import UpstreamStream
    from gateway.context import RequestContext
    from gateway.services import Services

__all__ = ["Stage", "chat_stages", "dispatcher", "embedding_stages", "run_stages"]

D = TypeVar("D")


@dataclass(frozen=True, slots=True)
class Stage(Generic[D]):
    name: str
    run: Callable[[RequestContext, D], Awaitable[UpstreamStream | None]]
    deps: D


def dispatcher(services: Services) -> DispatchDeps:
    settings = services.settings
    return DispatchDeps(services.generation, settings.retry, settings.breaker.cooldown_s)


def chat_stages(services: Services) -> tuple[Stage[Any], ...]:
    """``POST /v1/chat/completions``: the stages in order, each with what it uses."""
    s, settings, access = services, services.settings, services.access
    return (
        Stage("auth", auth.run, access.authenticator),
        Stage("intake", intake.run, None),
        Stage(
            "rate_limit",
            limits.run,
            LimitsDeps(
                access.usage_counters,
                access.limiter,
                s.cache,
                settings.redis.key_prefix,
                settings.rate_limit_segment_cap,
            ),
        ),
        Stage("template", template.run, access.templates),
        Stage(
            "cache",
            cache.run,
            CacheDeps(s.cache, s.embedder, settings.embedder.max_chars, settings.firewall.model),
        ),
        Stage(
            "firewall",
            firewall.run,
            FirewallDeps(settings.firewall, s.verdict_cache, dispatcher(s), s.counters),
        ),
        Stage("routing", routing.run, s.generation),
        Stage("dispatch", dispatch.run, dispatcher(s)),
    )


def embedding_stages(chat: Sequence[Stage[Any]]) -> tuple[Stage[Any], ...]:
    """``POST /v1/embeddings``: no prompt template, nothing to screen; cached by the exact
    tier."""
    return tuple(s for s in chat if s.name not in ("template", "firewall"))


async def run_stages(ctx: RequestContext, stages: Sequence[Stage[Any]]) -> UpstreamStream | None:
    """The open stream of a streamed answer; None when the answer is whole (``ctx.reply``)."""
    stream = None
    for stage in stages:
        start = time.perf_counter_ns()
        status = "error"
        try:
            stream = await stage.run(ctx, stage.deps)
            status = "ok"
        except ClientError:
            raise
        except BaseException:
            status = "failed"
            raise
        finally:
            end = time.perf_counter_ns()
            ctx.timings.append(
                StageTiming(stage.name, (start - ctx.started_ns) / 1e6, (end - start) / 1e6, status)
            )
        if ctx.answered or stream is not None:
            return stream
    return None
