"""Stage: ``floopy-prompt-id`` renders a stored template with the body's ``inputs``; the result
is what goes upstream. Without the header the stage does nothing (and costs nothing)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.policy.chat_request import parse_chat_request
from gateway.policy.templates import apply_template, parse_prompt_ref

if TYPE_CHECKING:
    from gateway.clients.templates import TemplateStore
    from gateway.context import RequestContext

__all__ = ["run"]


async def run(ctx: RequestContext, templates: TemplateStore) -> None:
    if not ctx.meta.prompt_id:
        return
    template_id, version = parse_prompt_ref(ctx.meta.prompt_id)
    ctx.prompt_id = template_id
    template = await templates.get(ctx.org_id, template_id, version)
    ctx.prompt_version = template.version
    rendered, ctx.prompt_inputs = apply_template(ctx.body, template)
    ctx.chat = parse_chat_request(rendered)
