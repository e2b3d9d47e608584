"""OpenAI's chat-completions wire format, read the cheap way (pure; no I/O).

Only the fields the record needs are decoded (model, usage, the assistant's text); msgspec
skips the rest. Bytes are never re-encoded: callers forward what the upstream sent.
"""

from __future__ import annotations

import msgspec

from gateway.domain import StreamObservation, TokenUsage
from gateway.policy.sse import DONE, event_data

__all__ = ["observe_event", "read_completion", "read_usage"]


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = 0


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    total_tokens: int | None = 0
    prompt_tokens_details: _PromptDetails | None = None


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Message | None = None
    finish_reason: str | None = None


class _Completion(msgspec.Struct):
    model: str = ""
    usage: _Usage | None = None


class _Chunk(msgspec.Struct):
    model: str = ""
    choices: list[_Choice] = []
    usage: _Usage | None = None


_decode_completion = msgspec.json.Decoder(_Completion).decode
_decode_chunk = msgspec.json.Decoder(_Chunk).decode


def read_usage(usage: _Usage) -> TokenUsage:
    details = usage.prompt_tokens_details
    return TokenUsage(
        prompt_tokens=usage.prompt_tokens or 0,
        completion_tokens=usage.completion_tokens or 0,
        total_tokens=usage.total_tokens or 0,
        cached_prompt_tokens=(details.cached_tokens or 0) if details else 0,
    )


def read_completion(body: bytes) -> tuple[str, TokenUsage | None]:
    """(model, usage) of a chat.completion body; ("", None) when it is not one."""
    try:
        completion = _decode_completion(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "", None
    usage = read_usage(completion.usage) if completion.usage else None
    return completion.model, usage


def observe_event(stream: StreamObservation, event: bytes, forward_usage_chunk: bool) -> bool:
    """Note what one raw SSE event tells (model, text, usage, end); say whether to forward it.

    The usage-only chunk (no choices, usage set) is forwarded only when the caller asked for
    usage itself; the gateway asks the upstream for it either way, to record token counts.
    """
    data = event_data(event)
    if data == DONE:
        stream.completed = True
        return True
    if not data:
        return True
    try:
        chunk = _decode_chunk(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return True  # not ours to judge: the caller gets what the provider sent
    if chunk.model and not stream.model:
        stream.model = chunk.model
    for choice in chunk.choices:
        if choice.index != 0:
            continue
        if choice.delta is not None and choice.delta.content:
            stream.content_parts.append(choice.delta.content)
        if choice.finish_reason:
            stream.finish_reason = choice.finish_reason
    if chunk.usage is not None:
        stream.usage = read_usage(chunk.usage)
        if not chunk.choices:
            return forward_usage_chunk
    return True
