"""Stage: resolve the requested model to the provider/model targets to try, in order."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.generation import Generation

__all__ = ["run"]


async def run(ctx: RequestContext, generation: Generation) -> None:
    ctx.targets = generation.upstreams.routing.targets(ctx.model_requested, ctx.org_id)
