"""The token counts and the cost a finished request is recorded with (after the response).

Tokens come from the provider when it reported usage. A successful answer without usage (some
OpenAI-compatible servers send none, a stream cut short never gets its usage chunk) is counted
with the local tokenizer instead, and the record says ``tokens_estimated``. Cost comes from the
price book for the provider and the model that answered; ``None`` when the model is unknown
(never 0, which would read as free) and when nothing was consumed (no answer).
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.domain import ChatRequest, StreamObservation, TokenUsage, UpstreamReply
from gateway.policy.prices import PriceBook
from gateway.policy.tokens import estimate_completion_tokens, estimate_prompt_tokens

__all__ = [
    "Answer",
    "Settled",
    "completion_text",
    "estimate_usage",
    "needs_estimate",
    "reported_usage",
    "settle_usage",
]

Answer = UpstreamReply | StreamObservation
"""What a provider (or the cache) answered: a whole reply, or what was seen of a stream."""


class Settled(msgspec.Struct, frozen=True):
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


def reported_usage(answer: Answer | None) -> TokenUsage | None:
    """The usage the provider reported (its reply, or its stream's usage chunk), if any."""
    return answer.usage if answer is not None else None


def completion_text(body: bytes) -> str | None:
    """The first choice's text of a chat.completion body; None when the body is not one."""
    try:
        choices = _decode_completion(body).choices
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    message = choices[0].message if choices else None
    return (message.content or "") if message else ""


def _answer_text(answer: Answer) -> str:
    if isinstance(answer, StreamObservation):
        return "".join(answer.content_parts)
    return completion_text(answer.body) or ""


def _prompt_messages(chat: ChatRequest | None) -> list[dict[str, Any]]:
    if chat is None:
        return []
    if chat.fields is not None:
        messages = chat.fields.get("messages")
        return messages if isinstance(messages, list) else []
    try:
        return _decode_messages(chat.raw).messages
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []


def estimate_usage(answer: Answer, chat: ChatRequest | None) -> TokenUsage:
    prompt = estimate_prompt_tokens([m for m in _prompt_messages(chat) if isinstance(m, dict)])
    completion = estimate_completion_tokens(_answer_text(answer))
    return TokenUsage(prompt, completion, prompt + completion, 0)


def needs_estimate(answer: Answer | None) -> bool:
    """True when ``settle_usage`` would run the tokenizer (an answer without reported usage)."""
    return answer is not None and answer.usage is None


def settle_usage(
    answer: Answer | None,
    chat: ChatRequest | None,
    prices: PriceBook,
    *,
    provider: str,
    model: str,
    from_cache: bool = False,
) -> Settled:
    """``answer``: what the caller got (None: no provider or cache answered); ``chat``: the
    request, for a prompt estimate; ``provider``/``model``: what the answer is priced as. A
    cache hit (``from_cache``) is recorded with the stored usage and a cost of 0 (its
    ``cost_saved_usd`` is what the miss cost)."""
    usage = reported_usage(answer)
    if from_cache:
        return Settled(usage or TokenUsage(), False, 0.0)
    if answer is None:
        return Settled(TokenUsage(), False, None)
    estimated = False
    if usage is None:
        usage, estimated = estimate_usage(answer, chat), True
    cost = prices.cost_usd(
        provider=provider,
        model=model,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens,
    )
    return Settled(usage, estimated, cost)
