"""Stage: pick the provider for this request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.policy.routing import choose_providers

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.runtime import Runtime

__all__ = ["run"]


async def run(ctx: RequestContext, rt: Runtime) -> None:
    names = choose_providers(ctx.model_requested, list(rt.providers))
    ctx.provider = rt.providers[names[0]]
