"""Stage 2: read and check what was sent: body (size-capped), content type, floopy headers, JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.policy.chat_request import (
    check_content_type,
    parse_chat_request,
    parse_embeddings_request,
)
from gateway.policy.headers import parse_floopy_headers

if TYPE_CHECKING:
    from gateway.context import RequestContext

__all__ = ["EMBEDDINGS", "run"]

EMBEDDINGS = "/v1/embeddings"


async def run(ctx: RequestContext, _: None) -> None:
    ctx.body = await ctx.read_body()
    ctx.meta = parse_floopy_headers(ctx.floopy_headers)
    check_content_type(ctx.headers.get("content-type", ""))
    if ctx.endpoint == EMBEDDINGS:
        ctx.chat = parse_embeddings_request(ctx.body)
    elif not ctx.meta.prompt_id:  # a templated body is parsed once rendered (stage template)
        ctx.chat = parse_chat_request(ctx.body)
