"""The token counts and the cost a finished request is recorded with (after the response).

Tokens come from the provider when it reported usage. A successful answer without usage (some
OpenAI-compatible servers send none, a stream cut short never gets its usage chunk) is counted
with the local tokenizer instead, and the record says ``tokens_estimated``. Cost comes from the
price book for the provider and the model that answered; ``None`` when the model is unknown
(never 0, which would read as free) and when nothing was consumed (no answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from gateway.clients.providers.base import TokenUsage
from gateway.context import RequestContext
from gateway.policy.prices import PriceBook
from gateway.policy.tokens import estimate_completion_tokens, estimate_prompt_tokens

__all__ = ["Settled", "completion_text", "needs_estimate", "reported_usage", "settle_usage"]


@dataclass(frozen=True, slots=True)
class Settled:
    usage: TokenUsage
    estimated: bool
    cost_usd: float | None


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice] = []


class _Messages(msgspec.Struct):
    messages: list[dict[str, Any]] = []


_decode_completion = msgspec.json.Decoder(_Completion).decode
_decode_messages = msgspec.json.Decoder(_Messages).decode


def reported_usage(ctx: RequestContext) -> TokenUsage | None:
    """The usage the provider reported (its reply, or its stream's usage chunk), if any."""
    if ctx.reply is not None:
        return ctx.reply.usage
    if ctx.stream is not None:
        return ctx.stream.usage
    return None


def completion_text(body: bytes) -> str | None:
    """The first choice's text of a chat.completion body; None when the body is not one."""
    try:
        choices = _decode_completion(body).choices
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    message = choices[0].message if choices else None
    return (message.content or "") if message else ""


def _answer_text(ctx: RequestContext) -> str:
    if ctx.stream is not None:
        return "".join(ctx.stream.content_parts)
    if ctx.reply is None:
        return ""
    return completion_text(ctx.reply.body) or ""


def _prompt_messages(ctx: RequestContext) -> list[dict[str, Any]]:
    chat = ctx.chat
    if chat is None:
        return []
    if chat.fields is not None:
        messages = chat.fields.get("messages")
        return messages if isinstance(messages, list) else []
    try:
        return _decode_messages(chat.raw).messages
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []


def estimate_usage(ctx: RequestContext) -> TokenUsage:
    prompt = estimate_prompt_tokens([m for m in _prompt_messages(ctx) if isinstance(m, dict)])
    completion = estimate_completion_tokens(_answer_text(ctx))
    return TokenUsage(prompt, completion, prompt + completion, 0)


def needs_estimate(ctx: RequestContext) -> bool:
    """True when ``settle_usage`` would run the tokenizer (an answer without reported usage)."""
    answered = ctx.reply is not None or ctx.stream is not None
    return answered and reported_usage(ctx) is None


def settle_usage(ctx: RequestContext, prices: PriceBook) -> Settled:
    """A cache hit is recorded with the stored usage and a cost of 0 (its ``cost_saved_usd``
    is what the miss cost)."""
    usage = reported_usage(ctx)
    if ctx.cache.hit is not None:
        return Settled(usage or TokenUsage(), False, 0.0)
    estimated = False
    answered = ctx.reply is not None or ctx.stream is not None
    if usage is None and answered:
        usage, estimated = estimate_usage(ctx), True
    if usage is None or not answered:
        return Settled(usage or TokenUsage(), estimated, None)
    cost = prices.cost_usd(
        provider=ctx.provider_name,
        model=ctx.model_used or (ctx.targets[0].model if ctx.targets else ctx.model_requested),
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens,
    )
    return Settled(usage, estimated, cost)
