"""Stage: the upstream call. Streams return once the upstream's status is in; the relay reads on."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.runtime import Runtime

__all__ = ["run"]


async def run(ctx: RequestContext, rt: Runtime) -> None:
    provider, chat = ctx.provider, ctx.chat
    if provider is None or chat is None:
        raise RuntimeError("dispatch runs after intake and routing")
    ctx.providers_tried.append(provider.name)
    if chat.stream:
        ctx.stream = await provider.open_stream(chat)
        ctx.status_code = ctx.stream.status_code
    else:
        ctx.reply = await provider.complete(chat)
        ctx.status_code = ctx.reply.status_code
        ctx.response_body = ctx.reply.body
