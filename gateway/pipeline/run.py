"""The order a request meets the stages, in one place, and the loop that times each of them.

A stage reads and fills the context, answers (sets ``ctx.answered``: a cache hit; the stages
after it do not run), or raises a ``ClientError``. A stage that answers with a stream returns
it (dispatch, a streamed cache hit): an open stream is not data, so it is not on the context,
and the caller of ``run_stages`` relays and closes it. The timing of every stage
that ran (even one that failed) becomes a span and a ``stage_latency_ms`` entry.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.domain import StageTiming
from gateway.pipeline import auth, cache, dispatch, firewall, intake, limits, routing, template
from shared.errors import ClientError

if TYPE_CHECKING:
    from gateway.clients.providers.base import UpstreamStream
    from gateway.context import RequestContext
    from gateway.runtime import Runtime

__all__ = ["EMBEDDING_STAGES", "STAGES", "Stage", "run_stages"]


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    run: Callable[[RequestContext, Runtime], Awaitable[UpstreamStream | None]]


STAGES: tuple[Stage, ...] = (
    Stage("auth", auth.run),
    Stage("intake", intake.run),
    Stage("rate_limit", limits.run),
    Stage("template", template.run),
    Stage("cache", cache.run),
    Stage("firewall", firewall.run),
    Stage("routing", routing.run),
    Stage("dispatch", dispatch.run),
)
EMBEDDING_STAGES: tuple[Stage, ...] = tuple(
    s for s in STAGES if s.name not in ("template", "firewall")
)
"""``POST /v1/embeddings``: no prompt template, nothing to screen; cached by the exact tier."""


async def run_stages(
    ctx: RequestContext, rt: Runtime, stages: Sequence[Stage] = STAGES
) -> UpstreamStream | None:
    """The open stream of a streamed answer; None when the answer is whole (``ctx.reply``)."""
    stream = None
    for stage in stages:
        start = time.perf_counter_ns()
        status = "error"
        try:
            stream = await stage.run(ctx, rt)
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
